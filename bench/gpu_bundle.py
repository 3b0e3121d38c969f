"""Bundle what ``bench/gpu_bench.py`` needs on a GPU machine that cannot reach the network.

Writes into ``--out`` (default ``<repo>/.gpu_bundle``, which ``.git/info/exclude`` should list):

- ``whl/``: Python 3.12 manylinux wheels, at this venv's versions, of every package that
  evalfleet and lm-eval 0.4.13 need and the device image lacks (its package list as the
  workplace documented it on 2026-11-17, below), grpcio and protobuf included (the committed
  stubs need this venv's versions);
- ``data/``: the mirror subset the bench reads (ARC, the four MMLU subjects);
- ``lmeval_local.py`` (lm-eval reads the mirror through it) and ``tokenizer/`` (SmolLM2's).

It prints the command to run there (about 20 MiB travels with the working tree).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DATA = ("allenai/ai2_arc", "cais/mmlu/abstract_algebra", "cais/mmlu/anatomy",
        "cais/mmlu/astronomy", "cais/mmlu/business_ethics")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_34_x86_64")
# Carried whatever the image holds: the generated stubs check these versions at import.
ALWAYS = ("grpcio", "protobuf")
DEVICE_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp"""  # whitespace-separated names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed_packages(roots: tuple[str, ...] = ("evalfleet", "lm-eval")) -> dict[str, str]:
    """name -> version in this venv, for the requirement closure of ``roots`` (extras off),
    less the image's packages and ``roots[0]`` itself (installed from the checkout)."""
    seen: dict[str, str | None] = {}

    def walk(name: str) -> None:
        key = _norm(name)
        if key in seen:
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            seen[key] = None
            return
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                walk(req.name)

    for root in roots:
        walk(root)
    image = {_norm(n) for n in DEVICE_IMAGE.split()} - set(ALWAYS)
    return {n: v for n, v in sorted(seen.items())
            if v and n not in image and n != _norm(roots[0])}


def download(packages: dict[str, str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    for name, version in packages.items():
        base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest),
                "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
        spec = f"{name}=={version}"
        if subprocess.run([*base, *platform_args, spec]).returncode == 0:
            continue
        # a pure-Python project without a wheel: build one here
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                        str(dest), spec], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu_bundle")
    parser.add_argument("--data_dir", type=Path, default=SHARED / "data")
    parser.add_argument("--lmeval_tool", type=Path, default=SHARED / "tools" / "lmeval_local.py")
    parser.add_argument("--tokenizer", type=Path, default=REPO / "models" / "smollm2-135m")
    parser.add_argument("--no_wheels", action="store_true")
    args = parser.parse_args()
    out = args.out
    for sub in DATA:
        shutil.copytree(args.data_dir / sub, out / "data" / sub, dirs_exist_ok=True)
    shutil.copy(args.lmeval_tool, out / "lmeval_local.py")
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (args.tokenizer / name).is_file():
            shutil.copy(args.tokenizer / name, out / "tokenizer" / name)
    if not args.no_wheels:
        packages = needed_packages()
        print("wheels:", " ".join(f"{n}=={v}" for n, v in packages.items()))
        download(packages, out / "whl")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    print(f"bundle {out}: {size:.1f} MiB. On the device (carry {rel}):")
    print(f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
          f"--target /tmp/site {rel}/whl/*.whl && export PYTHONPATH=/tmp/site && "
          f"python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "
          f"/tmp/site . && PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py --data_dir {rel}/data "
          f"--lmeval_tool {rel}/lmeval_local.py --tokenizer {rel}/tokenizer")


if __name__ == "__main__":
    main()
