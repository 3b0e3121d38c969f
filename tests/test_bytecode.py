"""The package's bytecode is written at install (``make install``, ``make bytecode``; ``make test``
refreshes it), as pip writes it for a regular install: where ``PYTHONDONTWRITEBYTECODE`` is set,
Python never writes it itself, and every process would compile each module it imports."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from conftest import REPO_ROOT


def _package_modules() -> list[Path]:
    """Every module of the installed packages (pyproject's ``package-dir``)."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    folders = config["tool"]["setuptools"]["package-dir"].values()
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).glob("*.py"))


def _is_current(source: Path) -> bool:
    """Whether ``source`` has bytecode that Python would use as it is (timestamp-checked: the
    header's source mtime and size are the file's)."""
    cached = Path(importlib.util.cache_from_source(str(source)))
    if not cached.is_file():
        return False
    header = cached.read_bytes()[:16]
    if header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(header[4:8], "little") != 0:  # hash-based: compare the source's hash
        return header[8:16] == importlib.util.source_hash(source.read_bytes())
    st = source.stat()
    return (int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF)


def test_every_module_of_the_package_has_current_bytecode():
    modules = _package_modules()
    assert len(modules) > 100  # the package, not an empty glob
    stale = [str(p.relative_to(REPO_ROOT)) for p in modules if not _is_current(p)]
    assert not stale, f"no current bytecode for {stale[:10]} ({len(stale)} in all): run " \
                      "`make bytecode` (make install and make test run it)"
