"""Weights & Biases: what lm-eval 0.4.13's ``WandbLogger`` logs, through the ``wandb`` package.

- ``wandb.init(**wandb_args)`` (``step`` is taken out and used for every log call) and
  ``run.config.update(wandb_config_args)``;
- the run config gets ``task_configs`` (the results' ``configs``) and ``cli_configs`` (its
  ``config``), secrets in model_args hidden (``api_key=***``, ``common/redact.py``);
- every numeric ``<task>/<metric>`` (``,none`` dropped from the name) is logged, so it is in the
  run summary; string values (aliases, ``N/A`` stderrs) go to the summary directly;
- the results table ``evaluation/eval_results`` (and ``evaluation/group_eval_results``);
- the results JSON as artifact ``results`` (type ``eval_results``, file ``results.json``);
- with samples: a table ``<task>_eval_results`` per task (``<group>_eval_results`` for tasks
  whose config names a group) and an artifact ``<task>`` (type ``samples_by_task``).

``WANDB_MODE=offline`` keeps everything in a local run folder (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.redact import redact_argv, redact_results
from evalfleet.common.request_kind import OutputType

_NONE_SUFFIX = re.compile(r",none$")


def _arguments(sample: dict[str, Any]) -> list[list[Any]]:
    """Request arguments of a sample record as lists (saved records use ``gen_args_i``)."""
    args = sample.get("arguments", [])
    if isinstance(args, dict):
        return [list(v.values()) if isinstance(v, dict) else [v] for v in args.values()]
    return [list(a) for a in args]


def _float(value: Any) -> float:
    return float(value[0] if isinstance(value, list | tuple) else value)


def sanitize_results(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary of string values, numeric values to log), keyed ``<task>/<metric>``."""
    summary: dict[str, Any] = {}
    logged: dict[str, Any] = {}
    for task, entry in results.get("results", {}).items():
        for key, value in entry.items():
            name = f"{task}/{_NONE_SUFFIX.sub('', key)}"
            if isinstance(value, str):
                summary[name] = value
            else:
                logged[name] = value
    return summary, logged


def results_table_rows(results: dict[str, Any], key: str = "results") -> list[list[Any]]:
    """Rows of lm-eval's W&B results table (it skips only ``alias`` and stderr keys)."""
    rows = []
    groups = set(results.get("groups", {}))
    versions = results.get("versions", {})
    n_shot = results.get("n-shot", {})
    for name, entry in results.get(key, {}).items():
        if name in groups and key != "groups":
            continue
        version = versions.get(name)
        version = None if version == "N/A" else version
        for metric_filter, value in entry.items():
            metric, _, filter_name = metric_filter.partition(",")
            if metric.endswith("_stderr") or metric == "alias":
                continue
            stderr_key = f"{metric}_stderr,{filter_name}"
            if stderr_key in entry:
                se = entry[stderr_key]
                se = se if se == "N/A" else f"{se:.4f}"
                rows.append([name, version, filter_name, n_shot.get(name), metric, str(value),
                             str(se)])
            else:
                rows.append([name, version, filter_name, n_shot.get(name), metric, str(value),
                             ""])
    return rows


def samples_frame(samples: list[dict[str, Any]], config: dict[str, Any]) -> Any:
    """lm-eval's per-task samples table as a pandas DataFrame."""
    import numpy as np
    import pandas as pd

    output_type = config.get("output_type")
    args = [_arguments(x) for x in samples]
    ids = [x["doc_id"] for x in samples]
    labels = [x["target"] for x in samples]
    instance: list[Any] = [""] * len(ids)
    resps: list[Any] = [""] * len(ids)
    filtered: list[Any] = [""] * len(ids)
    metrics: dict[str, list[Any]] = {}
    for entry in config.get("metric_list", []):
        metric = entry.get("metric")
        if metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
            unit = "words" if metric == "word_perplexity" else "bytes"
            metrics[f"{metric}_loglikelihood"] = [x[metric][0] for x in samples]
            metrics[f"{metric}_{unit}"] = [x[metric][1] for x in samples]
        elif all(metric in x for x in samples):
            metrics[metric] = [x[metric] for x in samples]
    frame: dict[str, Any] = {"id": ids}
    if output_type == OutputType.LOGLIKELIHOOD:
        instance = [a[0][0] for a in args]
        labels = [a[0][1] for a in args]
        resps = [f"log probability of continuation is {x['resps'][0][0][0]} \n\ncontinuation "
                 f"will {'be' if str(x['resps'][0][0][1]) == 'True' else 'not be'} generated "
                 "with greedy sampling" for x in samples]
        filtered = [f"log probability of continuation is {x['filtered_resps'][0][0]} \n\n"
                    f"continuation will "
                    f"{'be' if str(x['filtered_resps'][0][1]) == 'True' else 'not be'} "
                    "generated with greedy sampling" for x in samples]
    elif output_type == OutputType.MULTIPLE_CHOICE:
        instance = [a[0][0] for a in args]
        frame_choices = ["\n".join(f"{i}. {c[1]}" for i, c in enumerate(a)) for a in args]
        resps = [int(np.argmax([_float(n[0]) for n in x["resps"]])) for x in samples]
        filtered = [int(np.argmax([_float(n) for n in x["filtered_resps"]])) for x in samples]
    elif output_type in (OutputType.LOGLIKELIHOOD_ROLLING, OutputType.GENERATE_UNTIL):
        instance = [a[0][0] for a in args]
        resps = [x["resps"][0][0] if isinstance(x["resps"][0], list) else x["resps"][0]
                 for x in samples]
        filtered = [x["filtered_resps"][0] for x in samples]
    frame["data"] = instance
    if output_type == OutputType.MULTIPLE_CHOICE:
        frame["choices"] = frame_choices
    frame.update({"input_len": [len(x) for x in instance], "labels": labels,
                  "output_type": output_type, "raw_predictions": resps,
                  "filtered_predictions": filtered})
    frame.update(metrics)
    return pd.DataFrame(frame)


class WandbSink:
    """Logs a run to W&B as lm-eval's ``--wandb_args`` does."""

    def __init__(self, init_args: dict[str, Any], config_args: dict[str, Any] | None = None,
                 *, reuse_active: bool = True) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise InvalidArgumentError(
                "--wandb_args: the wandb package is not installed (pip install "
                "'evalfleet[wandb]')") from exc
        self.wandb = wandb
        args = dict(init_args)
        self.step = args.pop("step", None)
        if wandb.run is None or not reuse_active:
            with _argv_redacted():  # W&B records the command line: --model_args api_key=...
                self.run = wandb.init(**args)
            if config_args:
                self.run.config.update(config_args)
        else:
            self.run = wandb.run

    # -- results ------------------------------------------------------------------------------
    def log_results(self, results: dict[str, Any]) -> None:
        """The run's config, metrics, tables and results artifact (secrets hidden)."""
        results = redact_results(results)
        wandb = self.wandb
        self.run.config.update({"task_configs": results.get("configs", {}),
                                "cli_configs": results.get("config", {})},
                               allow_val_change=self.step is not None)
        summary, logged = sanitize_results(results)
        self.run.summary.update(summary)
        self.run.log(logged, step=self.step)
        columns = ["Version", "Filter", "num_fewshot", "Metric", "Value", "Stderr"]
        table = wandb.Table(columns=["Tasks", *columns], data=results_table_rows(results))
        self.run.log({"evaluation/eval_results": table}, step=self.step)
        if "groups" in results:
            groups = wandb.Table(columns=["Groups", *columns],
                                 data=results_table_rows(results, "groups"))
            self.run.log({"evaluation/group_eval_results": groups}, step=self.step)
        artifact = wandb.Artifact("results", type="eval_results")
        with artifact.new_file("results.json", mode="w", encoding="utf-8") as handle:
            handle.write(json.dumps(results, indent=2, default=str, ensure_ascii=False))
        self.run.log_artifact(artifact)

    # -- samples ------------------------------------------------------------------------------
    def log_samples(self, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]
                    ) -> None:
        import pandas as pd

        wandb = self.wandb
        configs = results.get("configs", {})
        groups_in_results = set(results.get("groups", {}))
        by_group: dict[str, list[str]] = {}
        ungrouped = []
        for task in results.get("results", {}):
            if task in groups_in_results or task not in samples:
                continue
            group = configs.get(task, {}).get("group")
            for name in ([group] if isinstance(group, str) else group or []):
                by_group.setdefault(name, []).append(task)
            if not group:
                ungrouped.append(task)
        for task in ungrouped:
            frame = samples_frame(samples[task], configs.get(task, {}))
            self.run.log({f"{task}_eval_results": wandb.Table(dataframe=frame)}, step=self.step)
            self._samples_artifact(task, samples[task])
        for group, tasks in by_group.items():
            frames = []
            for task in tasks:
                frame = samples_frame(samples[task], configs.get(task, {}))
                frame["group"] = group
                frame["task"] = task
                frames.append(frame)
                self._samples_artifact(task, samples[task])
            self.run.log({f"{group}_eval_results": wandb.Table(
                dataframe=pd.concat(frames, ignore_index=True))}, step=self.step)

    def _samples_artifact(self, task: str, records: list[dict[str, Any]]) -> None:
        artifact = self.wandb.Artifact(task, type="samples_by_task")
        with artifact.new_file(f"{task}_eval_samples.json", mode="w",
                               encoding="utf-8") as handle:
            handle.write(json.dumps(records, indent=2, default=str, ensure_ascii=False))
        self.run.log_artifact(artifact)

    # -- the sink interface -------------------------------------------------------------------
    def log(self, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]] | None,
            console: Console | None = None) -> None:
        """Log results (and samples); a failure is reported, never raised (as lm-eval)."""
        try:
            self.log_results(copy.deepcopy(results))
            if samples:
                self.log_samples(results, samples)
        except Exception as exc:  # noqa: BLE001 - a tracker failure never loses the results
            if console is not None:
                console.print(f"warning: logging to W&B failed: {type(exc).__name__}: {exc}")
            raise_if_strict(exc)

    def finish(self) -> None:
        self.run.finish()


@contextlib.contextmanager
def _argv_redacted() -> Iterator[None]:
    """``sys.argv`` with its secrets hidden while W&B reads it (its run metadata)."""
    argv = sys.argv
    sys.argv = redact_argv(argv)
    try:
        yield
    finally:
        sys.argv = argv


def raise_if_strict(exc: Exception) -> None:
    """Re-raise tracker failures when ``EVALFLEET_STRICT_SINKS=1`` (tests, CI gates)."""
    import os

    if os.environ.get("EVALFLEET_STRICT_SINKS") == "1":
        raise exc
