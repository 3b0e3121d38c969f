"""MLflow: a run with the evaluation's params, metrics and files, and the registered model
version it evaluated tagged with its headline metrics.

- **params**: model, model_args (flattened as ``model_args.<key>``, secrets as ``***``), tasks,
  num_fewshot, limit, batch_size, the four seeds, bootstrap_iters, gen_kwargs, evalfleet's
  evaluation id;
- **metrics**: one per task (or group) and metric, ``<task>/<metric>`` (``/<filter>`` appended
  when the filter is not ``none``), each with ``<task>/<metric>_stderr`` when there is one;
- **artifacts**: ``results.json`` and, with samples, ``samples/samples_<task>.jsonl``;
- **registered model version** (``registered_model=NAME,model_version=N``): tags
  ``eval.<task>.<metric>`` = value (and ``.stderr``) for every metric of the top-level tasks and
  groups, and ``eval.mlflow_run_id``, so the registry shows how each version scored;
  ``evalfleet gate`` tags it with its verdict (:func:`gate_tags`).

Arguments (``--mlflow_args``): ``tracking_uri`` (else ``$MLFLOW_TRACKING_URI``), ``experiment``
(name; created when missing, default ``evalfleet``), ``run_name`` (default: the model name),
``registered_model``, ``model_version``; any other ``key=value`` becomes a run tag.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from evalfleet.common.errors import FailedPreconditionError, InvalidArgumentError
from evalfleet.common.redact import redact_results
from evalfleet.reporting.sinks.wandb_sink import raise_if_strict

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
_KNOWN = ("tracking_uri", "experiment", "run_name", "registered_model", "model_version")


def metric_name(task: str, metric: str, filter_name: str) -> str:
    """MLflow metric name for a task's metric (MLflow allows ``[A-Za-z0-9_-. /]``)."""
    name = f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric}/{filter_name}"
    return _UNSAFE.sub("_", name)


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """Every numeric metric and stderr of a results document, by MLflow metric name."""
    out: dict[str, float] = {}
    for task, entry in results.get("results", {}).items():
        for key, value in entry.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[metric_name(task, metric, filter_name)] = float(value)
    return out


def headline_tags(results: dict[str, Any]) -> dict[str, str]:
    """``eval.<task>.<metric>[.<filter>]`` tags for the top-level tasks and groups."""
    children = {c for cs in results.get("group_subtasks", {}).values() for c in cs}
    tags: dict[str, str] = {}
    for task, entry in results.get("results", {}).items():
        if task in children:
            continue
        for key, value in entry.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr") or isinstance(value, bool) \
                    or not isinstance(value, int | float):
                continue
            base = f"eval.{task}.{metric}" + ("" if filter_name == "none" else f".{filter_name}")
            tags[base] = f"{value:.6g}"
            stderr = entry.get(f"{metric}_stderr,{filter_name}")
            if isinstance(stderr, int | float) and not isinstance(stderr, bool):
                tags[f"{base}.stderr"] = f"{stderr:.6g}"
    return tags


def gate_tags(verdict: dict[str, Any]) -> dict[str, str]:
    """A release gate's verdict (``evalfleet gate``) as model version tags: ``gate.verdict``
    (GO, NO-GO or INCONCLUSIVE), ``gate.policy_sha256``, ``gate.baseline``, ``gate.candidate``
    and ``gate.reasons`` (cut to MLflow's 5000 characters)."""
    return {"gate.verdict": verdict["verdict"],
            "gate.policy_sha256": verdict["policy"]["sha256"],
            "gate.baseline": str(verdict["baseline"])[:5000],
            "gate.candidate": str(verdict["candidate"])[:5000],
            "gate.reasons": "; ".join(verdict["reasons"])[:5000]}


def params_of(results: dict[str, Any]) -> dict[str, str]:
    """The run's settings as MLflow params (values as text, at most 6000 characters)."""
    config = results.get("config", {})
    params: dict[str, Any] = {
        "model": config.get("model"),
        "tasks": ",".join(results.get("results", {})),
        "num_fewshot": config.get("num_fewshot"),
        "limit": config.get("limit"),
        "batch_size": config.get("batch_size"),
        "bootstrap_iters": config.get("bootstrap_iters"),
        "gen_kwargs": json.dumps(config.get("gen_kwargs") or {}),
        "random_seed": config.get("random_seed"), "numpy_seed": config.get("numpy_seed"),
        "torch_seed": config.get("torch_seed"), "fewshot_seed": config.get("fewshot_seed"),
        "model_name": results.get("model_name"),
        "evaluation_id": config.get("evaluation_id"),
    }
    model_args = config.get("model_args")
    if isinstance(model_args, dict):
        params.update({f"model_args.{k}": v for k, v in model_args.items()})
    elif model_args:
        params["model_args"] = model_args
    return {k: str(v)[:6000] for k, v in params.items() if v is not None}


@dataclass
class MlflowSink:
    """Logs a run to an MLflow tracking server (and tags a registered model version)."""

    tracking_uri: str
    experiment: str = "evalfleet"
    run_name: str = ""
    registered_model: str = ""
    model_version: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> MlflowSink:
        """From ``--mlflow_args`` key/values."""
        uri = str(args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "")
        if not uri:
            raise InvalidArgumentError("--mlflow_args: give tracking_uri=... (or set "
                                       "MLFLOW_TRACKING_URI)")
        sink = cls(tracking_uri=uri, experiment=str(args.get("experiment") or "evalfleet"),
                   run_name=str(args.get("run_name") or ""),
                   registered_model=str(args.get("registered_model") or ""),
                   model_version=str(args.get("model_version") or ""),
                   tags={k: str(v) for k, v in args.items() if k not in _KNOWN})
        sink.check()
        return sink

    def check(self) -> None:
        if bool(self.registered_model) != bool(self.model_version):
            raise InvalidArgumentError(
                "mlflow: registered_model and model_version go together (the version to tag)")

    def log_run(self, results: dict[str, Any],
                samples: dict[str, list[dict[str, Any]]] | None) -> str:
        """Create the run, log everything, tag the model version; returns the run id. Secrets
        in model_args are hidden from params and files (``common/redact.py``)."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        results = redact_results(results)

        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(self.experiment))
        name = self.run_name or str(results.get("model_name") or "evalfleet")
        tags = {"evalfleet.evaluation_id": str(results.get("config", {}).get("evaluation_id",
                                                                            "")),
                **self.tags}
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        try:
            import time

            now = int(time.time() * 1000)
            client.log_batch(
                run_id, params=[Param(k, v) for k, v in params_of(results).items()],
                metrics=[Metric(k, v, now, 0) for k, v in metrics_of(results).items()],
                tags=[RunTag(k, v) for k, v in tags.items()])
            client.log_text(run_id, json.dumps(results, indent=2, default=str,
                                               ensure_ascii=False), "results.json")
            for task, records in (samples or {}).items():
                text = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n"
                               for r in records)
                client.log_text(run_id, text, f"samples/samples_{task}.jsonl")
            if self.registered_model:
                self._tag_version(client, results, run_id)
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        self.run_id = run_id
        return run_id

    def _tag_version(self, client: Any, results: dict[str, Any], run_id: str) -> None:
        self.tag_version({**headline_tags(results), "eval.mlflow_run_id": run_id}, client)

    def tag_version(self, tags: dict[str, str], client: Any = None) -> None:
        """Set ``tags`` on the registered model version; FAILED_PRECONDITION naming it when the
        registry has no such version."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = client or MlflowClient(tracking_uri=self.tracking_uri)
        try:
            client.get_model_version(self.registered_model, self.model_version)
        except MlflowException as exc:
            raise FailedPreconditionError(
                f"mlflow: registered model '{self.registered_model}' has no version "
                f"{self.model_version} at {self.tracking_uri}") from exc
        for key, value in tags.items():
            client.set_model_version_tag(self.registered_model, self.model_version, key, value)

    # -- the sink interface -------------------------------------------------------------------
    def log(self, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]] | None,
            console: Console | None = None) -> None:
        """Log results (and samples); a failure is reported, never raised (as for W&B)."""
        try:
            run_id = self.log_run(results, samples)
            if console is not None:
                where = f"{self.tracking_uri} experiment '{self.experiment}' run {run_id}"
                if self.registered_model:
                    where += f", tagged {self.registered_model} v{self.model_version}"
                console.print(f"logged to MLflow: {where}")
        except Exception as exc:  # noqa: BLE001 - a tracker failure never loses the results
            if console is not None:
                console.print(f"warning: logging to MLflow failed: {type(exc).__name__}: {exc}")
            raise_if_strict(exc)

    def finish(self) -> None:
        """Nothing to close (the run is terminated by :meth:`log_run`)."""
