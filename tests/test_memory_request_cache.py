"""The request cache (``--cache_requests``) is bounded on disk: past
``$EVALFLEET_REQUEST_CACHE_MB`` the files used least recently are deleted, a read counts as a
use, and the file just written always stays."""

from __future__ import annotations

import os

import pytest

from evalfleet.server import request_cache


def _build(task_manager_task, limit: int):
    return request_cache.build_task_requests(
        task_manager_task(), mode="true", limit=limit, samples=None, num_fewshot=None,
        fewshot_seed=1234, system_instruction=None, apply_chat_template=False, gen_kwargs=None)


@pytest.fixture()
def arc_easy(data_dir, tmp_path, monkeypatch):
    """A fresh arc_easy task each call; the request cache in a folder of its own."""
    from evalfleet.tasks import TaskManager

    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(tmp_path))
    manager = TaskManager(data_dir=data_dir)
    return lambda: manager.load(["arc_easy"]).tasks["arc_easy"]


def test_writes_keep_the_cache_within_its_bound_least_recently_used_first(arc_easy,
                                                                         monkeypatch):
    first = _build(arc_easy, 1)
    _build(arc_easy, 2)
    files = sorted(request_cache.cache_root().glob("*.pkl"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    older, newer = files
    os.utime(older, ns=(1, 1))
    os.utime(newer, ns=(2, 2))
    assert _build(arc_easy, 1).requests == first.requests  # a hit: `older` is used now
    # Room for two files of this size: the third write deletes the one used least recently.
    bound = older.stat().st_size + newer.stat().st_size + 1500
    monkeypatch.setenv("EVALFLEET_REQUEST_CACHE_MB", str(bound / 2**20))
    _build(arc_easy, 3)
    left = set(request_cache.cache_root().glob("*.pkl"))
    assert older in left and newer not in left and len(left) == 2
    assert sum(p.stat().st_size for p in left) <= bound
    # A bound smaller than one file keeps just the file written.
    monkeypatch.setenv("EVALFLEET_REQUEST_CACHE_MB", "0")
    _build(arc_easy, 4)
    assert len(list(request_cache.cache_root().glob("*.pkl"))) == 1


def test_a_bad_bound_is_logged_and_the_default_used(monkeypatch, capsys):
    monkeypatch.setenv("EVALFLEET_REQUEST_CACHE_MB", "lots")
    assert request_cache.max_bytes() == request_cache.DEFAULT_MAX_MB * 2**20
    logged = capsys.readouterr()
    assert "EVALFLEET_REQUEST_CACHE_MB" in logged.out + logged.err
    monkeypatch.setenv("EVALFLEET_REQUEST_CACHE_MB", "1.5")
    assert request_cache.max_bytes() == int(1.5 * 2**20)
