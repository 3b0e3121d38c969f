"""Compiled scoring kernels land in a writable cache directory, never beside the sources, so an
installed (read-only) copy compiles once and later processes only load."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

# Runs in a fresh interpreter against the installed copy: which kernels it had to compile.
PROBE = """
import json
import numpy as np
import evalfleet.scoring as scoring
from numba.core import config, event

compiled = []

class Count(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__name__)

event.register("numba:compile", Count())
scoring.mean_stderr(np.arange(5.0))
print(json.dumps({"file": scoring.__file__, "cache_dir": config.CACHE_DIR,
                  "compiled": compiled}))
"""


def _installed_copy(root: Path) -> Path:
    """evalfleet's ``common`` and ``scoring`` packages laid out as installed, made read-only."""
    site = root / "site"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "common", site / "evalfleet" / "common", ignore=skip)
    shutil.copytree(REPO_ROOT / "scoring", site / "evalfleet" / "scoring", ignore=skip)
    for path in [*site.rglob("*"), site]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


def _probe(site: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(site), EVALFLEET_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, cwd=site)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()}


def test_kernels_compile_once_into_the_cache_dir(tmp_path):
    site = _installed_copy(tmp_path)
    cache = tmp_path / "cache"
    try:
        first = _probe(site, cache)
        assert Path(first["file"]).is_relative_to(site)  # the installed copy, not the checkout
        assert first["cache_dir"] == str(cache / "numba")
        assert {"seq_sum", "_sum_sq_dev"} <= set(first["compiled"])
        saved = _snapshot(cache / "numba")
        assert any(name.endswith(".nbi") for name in saved)
        assert any(name.endswith(".nbc") for name in saved)
        assert not [p for p in site.rglob("*") if p.suffix in (".nbi", ".nbc")]

        second = _probe(site, cache)  # a cold process: loads, compiles nothing, writes nothing
        assert second["compiled"] == []
        assert _snapshot(cache / "numba") == saved
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_an_explicit_numba_cache_dir_wins(tmp_path, monkeypatch):
    from evalfleet.scoring import _cache

    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(tmp_path / "ef"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert _cache.kernel_cache_dir() == str(tmp_path / "ef" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert _cache.kernel_cache_dir() == str(tmp_path / "mine")


def test_importing_scoring_is_cheap_and_every_name_resolves():
    code = ("import sys, evalfleet.scoring as s\n"
            "assert 'numba' not in sys.modules\n"
            "assert all(getattr(s, n) is not None for n in s.__all__)\n"
            "assert callable(s.stderr) and callable(s.request_loglikelihoods)\n"
            "assert 'numba' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_exported_name_shadows_a_submodule():
    """Importing a submodule sets it as a package attribute: a lazily exported name equal to a
    module's name would then resolve to the module."""
    import pkgutil

    from evalfleet import scoring

    modules = {m.name for m in pkgutil.iter_modules(scoring.__path__)}
    assert set(scoring.__all__) == set(scoring._EXPORTS)
    assert not modules & set(scoring.__all__)
    assert set(scoring._EXPORTS.values()) <= modules
