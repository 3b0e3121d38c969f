"""A cold ``evalfleet eval`` of an installed, read-only copy: what Numba compiles, said by Numba.

The whole CLI path (embedded coordinator and worker, wire decoding, scoring) runs in fresh
interpreters against a copy of every evalfleet package laid out as installed and made
read-only. Numba's event API counts compilations; its dispatchers' ``stats.cache_hits`` count
kernels loaded from the on-disk cache. The first process ever compiles the kernels its job needs
(seconds, printed, never asserted) into ``$EVALFLEET_CACHE_DIR/numba``; a later cold process
compiles nothing; ``evalfleet warmup`` compiles them ahead (a packager's install step), so that
even the first eval compiles nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO_ROOT

# Runs `evalfleet ARGS...` in this interpreter and prints, last, what Numba compiled and loaded.
PROBE = """
import atexit, gc, json, sys, time
from numba.core import event

compiled, depth, started = [], [0], [0.0]

class Count(event.Listener):
    def on_start(self, ev):
        if depth[0] == 0:
            started[0] = time.perf_counter()
        depth[0] += 1

    def on_end(self, ev):
        depth[0] -= 1
        seconds = time.perf_counter() - started[0] if depth[0] == 0 else 0.0
        compiled.append((ev.data["dispatcher"].py_func.__name__, seconds))

event.register("numba:compile", Count())

def report():
    from numba.core import config
    from numba.core.registry import CPUDispatcher
    import evalfleet.client.cli as cli
    loaded = sorted(d.py_func.__name__ for d in gc.get_objects()
                    if isinstance(d, CPUDispatcher) and sum(d.stats.cache_hits.values()))
    print(json.dumps({"compiled": sorted({n for n, _ in compiled}),
                      "compile_s": sum(s for _, s in compiled), "loaded": loaded,
                      "cache_dir": config.CACHE_DIR, "cli": cli.__file__}))

atexit.register(report)
from evalfleet.client.cli import main
sys.argv = ["evalfleet", *sys.argv[1:]]
main()
"""

#: The kernels a loglikelihood multiple-choice job runs: the wire scan of the worker's answers,
#: per-request sums, the multiple-choice metrics and the closed-form standard error.
JOB_KERNELS = {"_scan", "_segment_sums", "_mc_kernel", "seq_sum", "_sum_sq_dev"}


def _installed_copy(root: Path) -> Path:
    """Every evalfleet package at its installed path (pyproject's package-dir), read-only."""
    site = root / "site"
    mapping = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-dir"]
    skip = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    for package, folder in sorted(mapping.items()):
        target = site / Path(*package.split("."))
        for src in (REPO_ROOT / folder).iterdir():  # subpackages come from their own entry
            if src.is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name)
            elif src.name != "__pycache__" and ".".join((package, src.name)) not in mapping:
                shutil.copytree(src, target / src.name, ignore=skip)  # package data
    for path in [*site.rglob("*"), site]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


def _evalfleet(site: Path, cache: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(site), EVALFLEET_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True,
                          text=True, cwd=site.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _eval_args(model_dir: Path) -> list[str]:
    return ["eval", "--model", "hf", "--model_args", f"pretrained={model_dir}",
            "--tasks", "arc_easy", "--limit", "2", "--device", "cpu", "--store", ":memory:",
            "--no_progress"]


def _kernel_files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")}


@pytest.fixture()
def site(tmp_path):
    site = _installed_copy(tmp_path)
    yield site
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_a_cold_eval_compiles_nothing_once_the_cache_is_warm(site, tmp_path, tiny_model_dir,
                                                            data_dir):
    cache = tmp_path / "cache"
    first = _evalfleet(site, cache, *_eval_args(tiny_model_dir))
    assert Path(first["cli"]).is_relative_to(site)  # the installed copy, not the checkout
    assert first["cache_dir"] == str(cache / "numba")
    assert set(first["compiled"]) >= JOB_KERNELS
    print(f"first process ever: compiled {first['compiled']} in {first['compile_s']:.1f} s")
    saved = _kernel_files(cache / "numba")
    assert saved and not _kernel_files(site)

    second = _evalfleet(site, cache, *_eval_args(tiny_model_dir))  # cold process, warm cache
    assert second["compiled"] == [] and second["compile_s"] == 0
    assert set(second["loaded"]) >= JOB_KERNELS
    assert _kernel_files(cache / "numba") == saved  # loaded, nothing written


def test_warmup_compiles_ahead_so_the_first_eval_compiles_nothing(site, tmp_path,
                                                                 tiny_model_dir, data_dir):
    cache = tmp_path / "cache"
    warm = _evalfleet(site, cache, "warmup")
    assert set(warm["compiled"]) >= JOB_KERNELS
    print(f"evalfleet warmup: compiled {warm['compiled']} in {warm['compile_s']:.1f} s")
    first = _evalfleet(site, cache, *_eval_args(tiny_model_dir))
    assert first["compiled"] == [] and set(first["loaded"]) >= JOB_KERNELS
