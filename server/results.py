"""The results of a job in lm-eval 0.4.13's shapes: its results JSON, its markdown table, and the
typed ``EvaluationResults`` message of the coordinator API."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evalfleet.common.redact import redact_model_args
from evalfleet.server.generation_stats import SECTION as GENERATION_SECTION
from evalfleet.server.generation_stats import generation_section
from evalfleet.v1 import coordinator_pb2 as cpb

if TYPE_CHECKING:  # the client's table and file names need neither the scores nor Numba
    from evalfleet.server.evaluator import TaskScores

HIGHER_IS_BETTER_SYMBOLS = {True: "↑", False: "↓"}


@dataclass
class GroupInfo:
    """What the results need to know about a group."""

    name: str
    alias: str | None
    version: Any
    children: list[str]
    leaves: list[str]
    aggregate_metric_list: list[dict[str, Any]]


def sanitize_model_name(name: str) -> str:
    """lm-eval's file-system-safe model name (``/`` and friends become ``__``)."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if callable(value):
        return getattr(value, "__name__", str(value))
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


def group_results(groups: Sequence[GroupInfo], task_results: Mapping[str, dict[str, Any]],
                  sample_lens: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """lm-eval's Group.aggregate for every group with an ``aggregate_metric_list``."""
    from evalfleet import scoring

    out: dict[str, dict[str, Any]] = {}
    for group in groups:
        entry: dict[str, Any] = {"alias": group.alias or group.name, "name": group.name,
                                 "sample_len": sum(sample_lens[t] for t in group.leaves)}
        counts: dict[str, int] = {}
        for agg in group.aggregate_metric_list:
            metric = agg["metric"]
            filters = agg.get("filter_list")
            if filters is None:
                filters = sorted({key.split(",", 1)[1] for t in group.leaves
                                  for key in task_results[t]
                                  if key.startswith(f"{metric},")})
            elif isinstance(filters, str):
                filters = [filters]
            for filter_name in filters:
                key = f"{metric},{filter_name}"
                leaves = [t for t in group.leaves if key in task_results[t]]
                if not leaves:
                    continue
                values = [task_results[t][key] for t in leaves]
                stderrs = [task_results[t][f"{metric}_stderr,{filter_name}"] for t in leaves]
                sizes = [sample_lens[t] for t in leaves]
                value, stderr = scoring.group_aggregate(
                    values, stderrs, sizes, weight_by_size=agg.get("weight_by_size", True))
                entry[key] = value
                entry[f"{metric}_stderr,{filter_name}"] = stderr
                counts[key] = sum(sizes)
        if counts:
            entry["sample_count"] = counts
        out[group.name] = entry
    return out


def build_results_json(*, scores: Sequence[TaskScores], groups: Sequence[GroupInfo],
                       roots: Sequence[str], n_shot: Mapping[str, int],
                       original_sizes: Mapping[str, int], config: dict[str, Any],
                       model_info: dict[str, Any], spec_extras: dict[str, Any],
                       started_at: float) -> dict[str, Any]:
    """The results document in lm-eval 0.4.13's schema (``results_<date>.json``)."""
    task_results: dict[str, dict[str, Any]] = {}
    sample_lens = {s.task.name: s.sample_len for s in scores}
    for s in scores:
        entry: dict[str, Any] = {"name": s.task.name, "alias": s.task.alias or s.task.name,
                                 "sample_len": s.sample_len}
        entry.update(s.aggregates)
        task_results[s.task.name] = entry
    grouped = group_results(groups, task_results, sample_lens)

    ordered: dict[str, dict[str, Any]] = {}
    children = {g.name: g.children for g in groups}

    def visit(name: str) -> None:
        if name in grouped:
            ordered[name] = grouped[name]
            for child in children[name]:
                visit(child)
        elif name in task_results:
            ordered[name] = task_results[name]

    for root in roots:
        visit(root)
    for name, entry in task_results.items():
        ordered.setdefault(name, entry)

    doc: dict[str, Any] = {"results": ordered}
    aggregated = {g.name: grouped[g.name] for g in groups if g.aggregate_metric_list}
    if aggregated:
        doc["groups"] = aggregated
    doc["group_subtasks"] = {g.name: list(g.children) for g in groups}
    for s in scores:
        doc["group_subtasks"].setdefault(s.task.name, [])
    doc["configs"] = {s.task.name: _json_safe(s.task.config) for s in scores}
    doc["versions"] = {
        **{s.task.name: s.task.version for s in scores},
        **{g.name: g.version for g in groups},
    }
    doc["n-shot"] = {**{s.task.name: n_shot[s.task.name] for s in scores},
                     **{g.name: _group_shots(g, n_shot) for g in groups
                        if _group_shots(g, n_shot) is not None}}
    doc["higher_is_better"] = {
        s.task.name: s.higher_is_better for s in scores
    }
    for g in groups:
        merged: dict[str, Any] = {}
        for leaf in g.leaves:
            for metric, hib in doc["higher_is_better"].get(leaf, {}).items():
                merged[metric] = hib if merged.get(metric, hib) == hib else None
        doc["higher_is_better"][g.name] = merged
    doc["n-samples"] = {s.task.name: {"original": original_sizes[s.task.name],
                                      "effective": s.sample_len} for s in scores}
    generation = generation_section((s.task.name, s.generation) for s in scores)
    if generation is not None:
        doc[GENERATION_SECTION] = generation
    doc["config"] = config
    doc["git_hash"] = None
    doc["date"] = started_at
    doc.update(model_info)
    doc.update(spec_extras)
    doc["total_evaluation_time_seconds"] = str(time.time() - started_at)
    return _json_safe(doc)


def _group_shots(group: GroupInfo, n_shot: Mapping[str, int]) -> int | None:
    shots = {n_shot[t] for t in group.leaves if t in n_shot}
    return shots.pop() if len(shots) == 1 else None


def make_table(results: dict[str, Any], column: str = "results") -> str:
    """lm-eval's markdown results table (``Tasks|Version|Filter|n-shot|Metric|...``)."""
    from pytablewriter import MarkdownTableWriter

    writer = MarkdownTableWriter()
    writer.headers = ["Groups" if column == "groups" else "Tasks", "Version", "Filter",
                      "n-shot", "Metric", "", "Value", "", "Stderr"]
    depth = _depths(results.get("group_subtasks", {}))
    rows = []
    for name, entry in results[column].items():
        entry = dict(entry)
        version = results["versions"].get(name, "    N/A")
        shots = str(results.get("n-shot", {}).get(name, " "))
        hib = results.get("higher_is_better", {}).get(name, {})
        label = entry.pop("alias", name)
        for key in ("name", "sample_len", "sample_count"):
            entry.pop(key, None)
        if depth.get(name, 0) > 0:
            label = " " * depth[name] + "- " + label
        for key, value in sorted(entry.items()):
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr"):
                continue
            shown = f"{value:.4f}" if isinstance(value, float) else value
            stderr_key = f"{metric}_stderr,{filter_name}"
            arrow = HIGHER_IS_BETTER_SYMBOLS.get(hib.get(metric), "")
            if stderr_key in entry:
                se = entry[stderr_key]
                se_text = "   N/A" if se == "N/A" else f"{se:.4f}"
                rows.append([label, version, filter_name, shots, metric, arrow, shown, "±",
                             se_text])
            else:
                rows.append([label, version, filter_name, shots, metric, arrow, shown, "", ""])
            label, version = "", ""
    writer.value_matrix = rows
    return writer.dumps()


def _depths(group_subtasks: Mapping[str, list[str]]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def walk(name: str, level: int) -> None:
        depth[name] = max(depth.get(name, 0), level)
        for child in group_subtasks.get(name, []):
            walk(child, level + 1)

    children = {c for cs in group_subtasks.values() for c in cs}
    for root in group_subtasks:
        if root not in children:
            walk(root, 0)
    return depth


def header_line(config: dict[str, Any]) -> str:
    """The line lm-eval prints above its table (secret model_args redacted)."""
    batch = config.get("batch_size")
    sizes = config.get("batch_sizes") or []
    suffix = f" ({','.join(map(str, sizes))})" if sizes else ""
    model_args = redact_model_args(config.get("model_args"))
    return (f"{config.get('model')} ({model_args}), gen_kwargs: "
            f"({config.get('gen_kwargs')}), limit: {config.get('limit')}, num_fewshot: "
            f"{config.get('num_fewshot')}, batch_size: {batch}{suffix}")


def full_table(results: dict[str, Any]) -> str:
    """Header line, the task table and, when there are groups, the group table."""
    parts = [header_line(results["config"]), make_table(results)]
    if "groups" in results:
        parts.append(make_table(results, "groups"))
    return "\n".join(parts)


def safe_table(results: dict[str, Any]) -> str:
    """:func:`full_table`, or a one-line note when the table cannot be built: the results JSON
    (every metric) is kept either way, so a display problem never loses a finished job."""
    try:
        return full_table(results)
    except Exception as exc:  # noqa: BLE001 - the results document is still complete
        from evalfleet.common.logging import get_logger

        get_logger("results").warning("results_table_failed", error=f"{type(exc).__name__}: {exc}")
        return (f"(the results table could not be built: {type(exc).__name__}: {exc}; every "
                "metric is in the results JSON)")


def _metric_values(entry: Mapping[str, Any], hib: Mapping[str, Any]) -> list[cpb.MetricValue]:
    values = []
    for key, value in sorted(entry.items()):
        if "," not in key:
            continue
        metric, _, filter_name = key.partition(",")
        if metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        msg = cpb.MetricValue(metric=metric, filter=filter_name, value=float(value),
                              higher_is_better=bool(hib.get(metric, True)))
        stderr = entry.get(f"{metric}_stderr,{filter_name}")
        if isinstance(stderr, int | float):
            msg.stderr = float(stderr)
        values.append(msg)
    return values


def typed_results(job_id: str, results: dict[str, Any], positions: int) -> cpb.EvaluationResults:
    """The ``EvaluationResults`` message for a results document."""
    msg = cpb.EvaluationResults(id=job_id, results_json=json.dumps(results),
                                positions_computed=positions, table=safe_table(results))
    groups = results.get("group_subtasks", {})
    for name, entry in results["results"].items():
        hib = results["higher_is_better"].get(name, {})
        if groups.get(name):
            msg.groups.append(cpb.GroupResult(
                group=name, alias=entry.get("alias", name),
                version=str(results["versions"].get(name, "")),
                subtasks=groups[name], metrics=_metric_values(entry, hib),
                sample_len=int(entry.get("sample_len", 0))))
        else:
            msg.tasks.append(cpb.TaskResult(
                task=name, alias=entry.get("alias", name),
                version=str(results["versions"].get(name, "")),
                n_shot=int(results["n-shot"].get(name, 0)),
                sample_len=int(entry.get("sample_len", 0)),
                metrics=_metric_values(entry, hib)))
    return msg
