"""Compare samples records value by value with lm-eval's: per-sample metric values, ``resps``
and ``filtered_resps``, with loglikelihood-derived numbers allowed float32 noise and 0/1 values,
texts and flags compared exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: per-sample loglikelihood-derived values (two float32 forward passes) may differ this much
REL = 1e-4
ABS = 1e-5


def _plain(value: Any) -> Any:
    """JSON's view of a value: tuples become lists, numpy scalars plain numbers."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item")
                                 else str(v)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _close(got: Any, expected: Any, where: str, rel: float) -> list[str]:
    if isinstance(expected, list) or isinstance(got, list):
        if not (isinstance(expected, list) and isinstance(got, list)) or len(got) != len(
                expected):
            return [f"{where}: {got!r} != {expected!r}"]
        return [d for i, (g, e) in enumerate(zip(got, expected, strict=True))
                for d in _close(g, e, f"{where}[{i}]", rel)]
    if isinstance(expected, dict) or isinstance(got, dict):
        if not (isinstance(expected, dict) and isinstance(got, dict)) or set(got) != set(
                expected):
            return [f"{where}: {got!r} != {expected!r}"]
        return [d for k in expected for d in _close(got[k], expected[k], f"{where}.{k}", rel)]
    if isinstance(expected, bool) or isinstance(got, bool):
        return [] if str(got) == str(expected) else [f"{where}: {got!r} != {expected!r}"]
    g, e = _number(got), _number(expected)
    if g is not None and e is not None:
        if (math.isnan(g) and math.isnan(e)) or g == e:
            return []
        if rel > 0 and math.isclose(g, e, rel_tol=rel, abs_tol=ABS):
            return []
        return [f"{where}: {got!r} != {expected!r}"]
    return [] if got == expected else [f"{where}: {got!r} != {expected!r}"]


def value_differences(got: Any, expected: Any, where: str = "", *, rel: float = REL) -> list[str]:
    """Where ``got`` differs from ``expected`` (empty when equal): numbers (or numeric strings,
    as lm-eval's samples file writes responses) within ``rel``; everything else exactly."""
    return _close(_plain(got), _plain(expected), where, rel)


def metric_values(record: dict, names: list[str]) -> dict[str, Any]:
    """The per-sample values a samples record holds under its metric names (``record["acc"]``
    ...), as lm-eval's evaluator writes them beside ``record["metrics"]``."""
    missing = [n for n in names if n not in record]
    assert not missing, f"samples record lacks the values of {missing}"
    return {n: record[n] for n in names}


def assert_sample_parity(mine: dict, ref: dict, *, rel: float = REL,
                         fields: tuple[str, ...] = ("resps", "filtered_resps")) -> None:
    """One samples record equals lm-eval's: metric names, each metric's value (0/1 metrics
    exactly), and the responses before and after filtering."""
    where = f"doc {ref['doc_id']} filter {ref['filter']}"
    assert mine["metrics"] == ref["metrics"], where
    diffs = value_differences(metric_values(mine, ref["metrics"]),
                              metric_values(ref, ref["metrics"]), where, rel=rel)
    for field in fields:
        diffs += value_differences(mine[field], ref[field], f"{where} {field}", rel=rel)
    assert not diffs, "\n".join(diffs)


def assert_samples_parity(ours: list[dict], theirs: list[dict], *, rel: float = REL) -> None:
    """A task's samples records equal lm-eval's, document by document and filter by filter."""
    def order(records: list[dict]) -> list[dict]:
        return sorted(records, key=lambda s: (s["doc_id"], s["filter"]))

    ours, theirs = order(ours), order(theirs)
    assert [(s["doc_id"], s["filter"]) for s in ours] == [
        (s["doc_id"], s["filter"]) for s in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert_sample_parity(mine, ref, rel=rel)


def lmeval_task_manager(lmeval_task_dir: Path, folder: Path, tasks: list[str]) -> Any:
    """An lm-eval TaskManager that knows only ``tasks``, read from the mirror through their
    override YAMLs in ``lmeval_task_dir`` (linked into ``folder``): indexing lm-eval's whole
    library costs ten seconds and more per manager."""
    from lm_eval.tasks import TaskManager

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"task: {name}" for name in tasks}
    found = set()
    for path in sorted(lmeval_task_dir.glob("*.yaml")):
        names = wanted.intersection(line.strip() for line in path.read_text().splitlines())
        if names:
            (folder / path.name).symlink_to(path)
            found |= names
    assert found == wanted, f"no override YAML for {sorted(wanted - found)}"
    return TaskManager(include_path=str(folder), include_defaults=False)
