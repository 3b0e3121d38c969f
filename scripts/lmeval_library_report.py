#!/usr/bin/env python
"""Which of lm-eval 0.4.13's own task YAMLs load in evalfleet, and build the same requests?

Walks lm-eval's task folder with evalfleet's task engine (``--include_path`` semantics, no
built-ins). Per task name (groups and tags are expanded by their tasks): does it load (config,
metrics, filters, ``!function``s), and where the data mirror holds its dataset, do evalfleet's
requests for the first ``--docs`` documents equal lm-eval's own (lm-eval reading the same mirror
through ../shared/tools/lmeval_local.py overrides)? And does ``tasks list`` (the library index's
static check, tasks/load_checks.py) mark the tasks that fail as "cannot load", with the same
reason? Writes one JSON line per task and prints the totals with every failure's reason.

    EVALFLEET_DATA_DIR=../shared/data .venv/bin/python scripts/lmeval_library_report.py \\
        --out out/library_report.jsonl [--only REGEX] [--docs 3]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO.parent / "shared" / "tools" / "lmeval_local.py"


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Timeout(f"took over {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_line(err: BaseException) -> str:
    return one_line_text(f"{type(err).__name__}: {err}")


def one_line_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\n", " "))[:400]


def listing_problems(folder: Path) -> dict[str, str]:
    """What ``tasks list`` marks "cannot load" in ``folder`` indexed as the task library, by
    task name (the reason)."""
    from evalfleet.tasks.library import library_entries

    out = {}
    for name, entry in library_entries(folder).items():
        if entry.kind == "task":
            problem = str(entry.error) if entry.error else entry.facts.cannot_load
            if problem:
                out[name] = problem
    return out


def reason_class(message: str) -> str:
    """A short family name for a failure, for the totals."""
    patterns = [
        (r"unknown metric|metric .* is not computed", "metric evalfleet does not compute"),
        (r"unknown aggregation|no registered default aggregation", "unknown aggregation"),
        (r"unknown filter", "unknown filter"),
        (r"cannot import module|No module named|ModuleNotFoundError", "missing Python package"),
        (r"promptsource", "promptsource prompts"),
        (r"multimodal", "multimodal task"),
        (r"unknown key", "unknown config key"),
        (r"Timeout|took over", "timed out"),
        (r"DataNotFoundError|Couldn't reach|OfflineModeIsEnabled|not in the mirror",
         "dataset not reachable offline (class loads it when built)"),
        (r"module failed to load", "task module failed at import"),
    ]
    for pattern, name in patterns:
        if re.search(pattern, message):
            return name
    return "other"


def lmeval_requests(manager, name: str, docs: int) -> list[tuple]:
    task = manager.load([name])["tasks"][name]
    if task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=docs)
    return [(i.doc_id, i.idx, i.request_type, tuple(i.args))
            for i in sorted(task.instances, key=lambda i: (i.doc_id, i.idx))]


def evalfleet_requests(task, docs: int) -> list[tuple]:
    return [(r.doc_id, r.idx, r.request_type, tuple(r.arguments))
            for r in task.build_requests(limit=docs)]


def first_difference(ours: list[tuple], theirs: list[tuple]) -> str:
    if len(ours) != len(theirs):
        return f"{len(ours)} requests vs lm-eval's {len(theirs)}"
    for a, b in zip(ours, theirs, strict=True):
        if a != b:
            return f"request {a[:3]}: {str(a[3])[:160]!r} vs lm-eval {str(b[3])[:160]!r}"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/library_report.jsonl")
    parser.add_argument("--only", default=None, help="regex on task names (a subset)")
    parser.add_argument("--tasks_dir", default=None,
                        help="walk this folder instead of lm-eval's own tasks (a subset)")
    parser.add_argument("--docs", type=int, default=3, help="documents compared per task")
    parser.add_argument("--overrides", default=None,
                        help="an existing output folder of ../shared/tools/lmeval_local.py "
                             "(default: make one, which scans all of lm-eval's tasks)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per task and side")
    parser.add_argument("--data_dir", default=os.environ.get("EVALFLEET_DATA_DIR",
                                                             str(REPO.parent / "shared/data")))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from evalfleet.common.logging import configure_logging

    configure_logging(json=False, level="ERROR")

    import lm_eval

    from evalfleet.tasks import TaskManager
    from evalfleet.tasks.dataset import mirror_folder

    started = time.time()
    lm_tasks = Path(args.tasks_dir or Path(lm_eval.__file__).resolve().parent / "tasks")
    manager = TaskManager(include_paths=[lm_tasks], data_dir=args.data_dir,
                          include_builtin=False)
    entries = [e for e in manager.list() if e.kind == "task"]
    if args.only:
        entries = [e for e in entries if re.search(args.only, e.name)]
    if args.overrides:
        overrides = Path(args.overrides)
    else:
        overrides = Path(tempfile.mkdtemp(prefix="lmeval-overrides-"))
        subprocess.run([sys.executable, str(TOOL), args.data_dir, str(overrides)], check=True,
                       capture_output=True)
    listing = listing_problems(lm_tasks)
    lm_manager = None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with out.open("w") as fh:
        for n, entry in enumerate(entries, 1):
            row = {"task": entry.name, "yaml": str(entry.yaml_path), "loaded": False,
                   "in_mirror": False, "compared": False, "same_requests": None, "error": None,
                   "listed_cannot_load": listing.get(entry.name)}
            folder = mirror_folder(Path(args.data_dir), entry.dataset_path, entry.dataset_name)
            row["in_mirror"] = bool(folder and folder.is_dir())
            sink = io.StringIO()
            try:
                with time_limit(args.timeout), contextlib.redirect_stderr(sink):
                    task = manager.load([entry.name]).tasks[entry.name]
                row["loaded"] = True
            except BaseException as err:  # noqa: BLE001 - reported per task
                if isinstance(err, KeyboardInterrupt):
                    raise
                row["error"] = one_line(err)
            if row["loaded"] and row["in_mirror"]:
                try:
                    with time_limit(args.timeout), contextlib.redirect_stderr(sink):
                        ours = evalfleet_requests(task, args.docs)
                        if lm_manager is None:
                            from lm_eval.tasks import TaskManager as LmTaskManager

                            lm_manager = LmTaskManager(include_path=str(overrides),
                                                       include_defaults=False)
                        theirs = lmeval_requests(lm_manager, entry.name, args.docs)
                    row["compared"] = True
                    diff = first_difference(ours, theirs)
                    row["same_requests"] = not diff
                    row["error"] = diff or None
                except BaseException as err:  # noqa: BLE001
                    if isinstance(err, KeyboardInterrupt):
                        raise
                    row["error"] = f"building requests: {one_line(err)}"
            rows.append(row)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            if n % 200 == 0:
                print(f"{n}/{len(entries)} tasks, {time.time() - started:.0f}s", flush=True)

    loaded = [r for r in rows if r["loaded"]]
    failed = [r for r in rows if not r["loaded"]]
    marked = [r for r in failed if r["listed_cannot_load"]]
    mirror = [r for r in loaded if r["in_mirror"]]
    same = [r for r in mirror if r["same_requests"]]
    summary = {
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.13",
        "tasks": len(rows), "loaded": len(loaded), "failed_to_load": len(failed),
        "loaded_with_data_in_mirror": len(mirror), "same_requests": len(same),
        "different_or_error": len(mirror) - len(same),
        "load_failures_by_reason": dict(collections.Counter(
            reason_class(r["error"] or "") for r in failed).most_common()),
        "failures_marked_in_listing": len(marked),
        "failures_marked_with_the_same_reason": sum(
            r["error"] == one_line_text(f"TaskError: {r['listed_cannot_load']}") for r in marked),
        "failures_not_marked": [r["task"] for r in failed if not r["listed_cannot_load"]],
        "marked_but_loaded": [r["task"] for r in loaded if r["listed_cannot_load"]],
        "seconds": round(time.time() - started, 1),
    }
    print("\nLoad failures:")
    for r in failed:
        print(f"  {r['task']}: {r['error']}")
    print("\nData in the mirror, requests not equal:")
    for r in mirror:
        if not r["same_requests"]:
            print(f"  {r['task']}: {r['error']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
