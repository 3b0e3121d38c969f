"""Shared fixtures: paths to the repository, the benchmark data mirror and the prepared models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("EVALFLEET_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
MODELS_DIR = REPO_ROOT / "models"
REAL_MODEL_DIR = MODELS_DIR / "smollm2-135m"
TINY_MODEL_DIR = MODELS_DIR / "tiny-smollm2"

# lm-eval and datasets must never reach for the hub in tests.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} missing at {path}: run `make install` first")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The read-only benchmark data mirror (../shared/data)."""
    return _require(DATA_DIR, "benchmark data mirror")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (fast tests)."""
    return _require(TINY_MODEL_DIR, "tiny test model")


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct dequantized to float32 safetensors."""
    return _require(REAL_MODEL_DIR, "SmolLM2-135M model")
