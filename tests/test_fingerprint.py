"""Model fingerprints: content hashes, remembered by file stat data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from evalfleet.inference.backends import fingerprint as fp


@pytest.fixture
def model_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x01" * 1000)
    (folder / "config.json").write_text('{"a": 1}')
    return folder


def _expected(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        h.update(path.read_bytes())
    return "sha256:" + h.hexdigest()


def test_fingerprint_hashes_names_lengths_and_bytes(model_dir):
    files = fp.model_files(model_dir, None)
    assert [f.name for f in files] == ["model.safetensors", "config.json"]
    assert fp.fingerprint(files, "x") == _expected(files)
    assert fp.fingerprint([], "a") != fp.fingerprint([], "b")


def test_unchanged_files_are_not_read_again(model_dir, monkeypatch):
    files = fp.model_files(model_dir, None)
    first = fp.fingerprint(files, "x")

    real_open = Path.open

    def guarded_open(self, *args, **kwargs):
        if self in files:
            raise AssertionError(f"{self} was read although its stat data is unchanged")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    assert fp.fingerprint(files, "x") == first


def test_changed_file_is_hashed_again(model_dir):
    files = fp.model_files(model_dir, None)
    first = fp.fingerprint(files, "x")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"\x02" * 1000)  # same size, new bytes and mtime
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = fp.fingerprint(files, "x")
    assert second != first and second == _expected(files)


def test_corrupt_or_unwritable_cache_only_costs_a_rehash(model_dir, tmp_path, monkeypatch):
    files = fp.model_files(model_dir, None)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fingerprints.json").write_text("{not json")
    assert fp.fingerprint(files, "x") == _expected(files)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(blocked))
    assert fp.fingerprint(files, "x") == _expected(files)
