"""Content fingerprints of a model: sha256 over its weights, config and tokenizer files."""

from __future__ import annotations

import hashlib
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_META_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "vocab.txt")
_CHUNK = 16 * 1024 * 1024


def resolve_local_dir(name: str, revision: str = "main", subfolder: str = "") -> Path | None:
    """A local directory for a path or an already cached hub id; None if neither."""
    path = Path(name)
    if path.is_dir():
        return path / subfolder if subfolder else path
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a hub id): no local files
        return None
    return snap / subfolder if subfolder else snap


def model_files(model_dir: Path, gguf_file: str | None) -> list[Path]:
    """The weight and metadata files that determine the model's outputs."""
    if gguf_file:
        gguf = Path(gguf_file) if Path(gguf_file).is_absolute() else model_dir / gguf_file
        weights = [gguf] if gguf.is_file() else []
    else:
        weights = sorted(p for p in model_dir.iterdir()
                         if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and p.suffix != ".gguf")
    meta = [model_dir / f for f in _META_FILES if (model_dir / f).is_file()]
    return weights + meta


def tokenizer_files(tok_dir: Path) -> list[Path]:
    """The tokenizer's definition files."""
    return [tok_dir / f for f in _TOKENIZER_FILES if (tok_dir / f).is_file()]


def fingerprint(files: list[Path], fallback: str) -> str:
    """sha256 over (file name, length, bytes) of ``files``; of ``fallback`` when none exist."""
    h = hashlib.sha256()
    if not files:
        h.update(b"name:" + fallback.encode())
        return "sha256:" + h.hexdigest()
    for path in files:
        h.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return "sha256:" + h.hexdigest()
