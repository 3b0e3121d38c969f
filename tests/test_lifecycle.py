"""The collector policy of a process's start-up (``common/lifecycle.py``), run in child processes so
that the test process's own collector is never changed."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import gc, json
from evalfleet.common import lifecycle
{before}
made_at_startup = [object()]  # tracked: a list
disabled_during_startup = not gc.isenabled()
lifecycle.end_startup({end_args})
print(json.dumps({{"disabled_during_startup": disabled_during_startup,
                  "enabled_after": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""


def _probe(before: str, end_args: str = "") -> dict:
    import json

    code = PROBE.format(before=before, end_args=end_args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("end_args", ["", "collect=True"])
def test_a_deferred_startup_is_frozen_and_collected_as_usual_after(end_args):
    seen = _probe("lifecycle.defer_collection()", end_args)
    assert seen["disabled_during_startup"] and seen["enabled_after"]
    assert seen["frozen"] > 1000  # the interpreter's and the probe's objects


def test_ending_a_startup_that_was_not_deferred_changes_nothing():
    """``main`` called as a library (the tests) never has its objects frozen."""
    seen = _probe("")
    assert seen == {"disabled_during_startup": False, "enabled_after": True, "frozen": 0}


def test_a_collector_already_off_is_left_off():
    seen = _probe("gc.disable(); lifecycle.defer_collection()")
    assert seen == {"disabled_during_startup": True, "enabled_after": False, "frozen": 0}


def test_the_process_exits_with_its_code_after_its_threads_atexit_handlers_and_output(
        tmp_path):
    """``exit_process`` skips finalization only: work queued on a thread pool finishes, a
    non-daemon thread is waited for, ``atexit`` handlers run, and what was printed without a
    newline still reaches the pipe."""
    done_dir = tmp_path
    code = (f"import atexit, pathlib, threading, time\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from evalfleet.common import lifecycle\n"
            f"d = pathlib.Path({str(done_dir)!r})\n"
            "def late(name):\n"
            "    time.sleep(0.5); (d / name).write_text('done')\n"
            "ThreadPoolExecutor(1).submit(late, 'pool')\n"
            "threading.Thread(target=late, args=('thread',)).start()\n"
            "atexit.register(lambda: (d / 'atexit').write_text('done'))\n"
            "print('unflushed', end='')\nlifecycle.exit_process(7)\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (ran.returncode, ran.stdout) == (7, "unflushed"), ran.stderr
    assert sorted(p.name for p in done_dir.iterdir()) == ["atexit", "pool", "thread"]


def test_a_task_listing_runs_with_the_collector_on():
    """``evalfleet eval --tasks list`` starts as an evaluation (collection deferred) but loads
    no model and starts no service: the listing itself runs with the collector on."""
    code = """
import gc, json, sys
from evalfleet.common import lifecycle
lifecycle.defer_collection()
import evalfleet.client.eval_command as eval_command
seen = {}
listing = eval_command.print_task_listing
def spy(*args):
    seen["enabled_while_listing"] = gc.isenabled()
    return listing(*args)
eval_command.print_task_listing = spy
from evalfleet.client.cli import main
code = main(["eval", "--tasks", "list_groups"])
print(json.dumps({"code": code, **seen}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    import json

    assert json.loads(out.strip().splitlines()[-1]) == {"code": 0,
                                                        "enabled_while_listing": True}
