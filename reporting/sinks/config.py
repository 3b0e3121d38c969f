"""The coordinator's sinks: trackers that jobs submitted by any gRPC client may be logged to.

The operator lists them in a YAML file given to ``evalfleet serve coordinator --sinks FILE``::

    sinks:
      mlflow:                          # the name a spec uses (EvaluationSpec.sinks[].name)
        type: mlflow
        tracking_uri: http://127.0.0.1:5000
        experiment: evalfleet           # optional, default "evalfleet"
        registered_models: [smollm2]    # optional: the only models a spec may tag
      wandb:
        type: wandb
        project: evals                  # any wandb.init argument except dir-like ones
        mode: offline

A spec only picks sinks by name and sets per-job fields (run name, registered model and
version, tags). Where a tracker lives (tracking URI, W&B project/entity/mode) comes from this
file alone, so a remote client can neither make the coordinator contact a host of its choosing
nor write files where it likes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.reporting.sinks.mlflow_sink import MlflowSink

SINK_TYPES = ("mlflow", "wandb")
#: wandb.init arguments a sink configuration may not set (files and processes are the
#: operator's business, not a job's).
_WANDB_FORBIDDEN = ("dir", "settings", "resume_from", "fork_from")


@dataclass
class SinkConfig:
    """One configured sink."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    registered_models: list[str] | None = None


def _fail(path: Path | str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"--sinks {path}: {message}")


def parse_sinks(data: Any, source: Path | str = "<sinks>") -> dict[str, SinkConfig]:
    """Validate the ``sinks:`` mapping."""
    if not isinstance(data, dict) or not isinstance(data.get("sinks"), dict):
        raise _fail(source, "expected a mapping 'sinks: {name: {type: mlflow|wandb, ...}}'")
    out: dict[str, SinkConfig] = {}
    for name, raw in data["sinks"].items():
        if not isinstance(raw, dict) or raw.get("type") not in SINK_TYPES:
            raise _fail(source, f"sink '{name}': set type to one of {', '.join(SINK_TYPES)}")
        options = {k: v for k, v in raw.items() if k not in ("type", "registered_models")}
        models = raw.get("registered_models")
        if models is not None and not (isinstance(models, list)
                                       and all(isinstance(m, str) for m in models)):
            raise _fail(source, f"sink '{name}': registered_models must be a list of names")
        if raw["type"] == "mlflow" and not options.get("tracking_uri"):
            raise _fail(source, f"sink '{name}': an mlflow sink needs tracking_uri")
        if raw["type"] == "wandb":
            bad = sorted(set(options) & set(_WANDB_FORBIDDEN))
            if bad:
                raise _fail(source, f"sink '{name}': {', '.join(bad)} cannot be set")
        out[str(name)] = SinkConfig(str(name), raw["type"], options, models)
    return out


def load_sinks_config(path: str | Path) -> dict[str, SinkConfig]:
    """Read the operator's sinks file."""
    file = Path(path)
    if not file.is_file():
        raise _fail(file, "no such file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise _fail(file, f"not valid YAML ({exc})") from None
    return parse_sinks(data, file)


def check_requests(requests: Any, configured: dict[str, SinkConfig] | None) -> None:
    """INVALID_ARGUMENT naming the field for a sink request the configuration does not allow."""
    for i, request in enumerate(requests):
        field_name = f"spec.sinks[{i}]"
        sink = (configured or {}).get(request.name)
        if sink is None:
            names = ", ".join(sorted(configured or {})) or "none are configured"
            raise InvalidArgumentError(
                f"{field_name}.name: '{request.name}' is not a sink of this coordinator "
                f"({names}); sinks are set by the operator's --sinks file")
        if bool(request.registered_model) != bool(request.model_version):
            raise InvalidArgumentError(
                f"{field_name}: registered_model and model_version go together")
        if request.registered_model and sink.type != "mlflow":
            raise InvalidArgumentError(
                f"{field_name}.registered_model: only mlflow sinks tag model versions")
        if request.registered_model and sink.registered_models is not None \
                and request.registered_model not in sink.registered_models:
            raise InvalidArgumentError(
                f"{field_name}.registered_model: '{request.registered_model}' is not among "
                f"the models sink '{sink.name}' may tag ({', '.join(sink.registered_models)})")


def make_sink(sink: SinkConfig, request: Any) -> Any:
    """A sink object for one job: the configured options plus the request's per-job fields."""
    tags = dict(request.tags)
    if sink.type == "mlflow":
        return MlflowSink(tracking_uri=str(sink.options["tracking_uri"]),
                          experiment=str(sink.options.get("experiment") or "evalfleet"),
                          run_name=request.run_name, registered_model=request.registered_model,
                          model_version=request.model_version, tags=tags)
    from evalfleet.reporting.sinks.wandb_sink import WandbSink

    init = dict(sink.options)
    if request.run_name:
        init["name"] = request.run_name
    if tags:
        init["tags"] = [f"{k}={v}" for k, v in tags.items()]
    init["reinit"] = "create_new"
    return WandbSink(init, reuse_active=False)
