"""Content fingerprints of a model: sha256 over its weights, config and tokenizer files.

Hashing gigabytes of weights takes seconds to minutes, so a computed fingerprint is remembered
in a small cache keyed by every file's path, size, mtime and inode (as ``git`` trusts its index
stat data): a worker restarting on unchanged files skips the read. Set ``EVALFLEET_CACHE_DIR``
to move the cache (default ``$XDG_CACHE_HOME/evalfleet`` or ``~/.cache/evalfleet``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from evalfleet.common.logging import get_logger
from evalfleet.common.paths import cache_dir

log = get_logger("backend.fingerprint")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_META_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "vocab.txt")
_CHUNK = 16 * 1024 * 1024
_CACHE_FILE = "fingerprints.json"
_CACHE_ENTRIES = 256


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
    key = _stat_key(files)
    cache = _read_cache()
    if key in cache:
        return cache[key]
    for path in files:
        h.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    cache[key] = digest  # newest last: the oldest entries are dropped beyond _CACHE_ENTRIES
    _write_cache(dict(list(cache.items())[-_CACHE_ENTRIES:]))
    return digest


def _stat_key(files: list[Path]) -> str:
    parts = []
    for path in files:
        st = path.stat()
        parts.append(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read_cache() -> dict[str, str]:
    path = cache_dir() / _CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("fingerprint_cache_unreadable", path=str(path), error=str(exc))
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str) and v.startswith("sha256:")}


def _write_cache(cache: dict[str, str]) -> None:
    """Atomic replace; a cache that cannot be written only costs a re-hash next time."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fingerprints.")
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh)
        os.replace(tmp, folder / _CACHE_FILE)
    except OSError as exc:
        log.warning("fingerprint_cache_unwritable", path=str(folder), error=str(exc))
