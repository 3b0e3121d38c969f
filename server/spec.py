"""Validation of an ``EvaluationSpec`` into Python values (INVALID_ARGUMENT naming the field)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evalfleet.common.args import parse_kv_args
from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.generation import GenerationParams
from evalfleet.common.price_table import check_price_table
from evalfleet.v1 import coordinator_pb2 as cpb

DEFAULT_BOOTSTRAP_ITERS = 100_000
DEFAULT_SEEDS = {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234}


@dataclass(frozen=True)
class TaskOverrides:
    """What a job changes in the tasks built for it, as a value (the spec and the task configs
    are never rewritten): ``predict_only`` computes no metric (lm-eval's ``bypass``)."""

    predict_only: bool = False


@dataclass
class ParsedSpec:
    """An ``EvaluationSpec`` validated and parsed into Python values."""

    spec: cpb.EvaluationSpec
    model_args: dict[str, Any]
    gen_kwargs: dict[str, Any]
    metadata: dict[str, Any]
    limit: float | int | None
    num_fewshot: int | None
    seeds: dict[str, int]
    bootstrap_iters: int
    batch_size: str
    samples: dict[str, list[int]] | None = None
    fewshot_as_multiturn: bool | None = None

    @property
    def task_overrides(self) -> TaskOverrides:
        """The job's overrides of its tasks."""
        return TaskOverrides(predict_only=self.spec.predict_only)

    @property
    def apply_chat_template(self) -> bool:
        """Whether prompts are rendered with the model's chat template."""
        return self.spec.apply_chat_template


def _parse_limit(spec: cpb.EvaluationSpec) -> float | int | None:
    if not spec.HasField("limit"):
        return None
    if not 0 < spec.limit < math.inf:
        raise InvalidArgumentError("spec.limit: must be a finite number > 0 (a count, or a "
                                   "fraction < 1.0)")
    return spec.limit if spec.limit < 1.0 else int(spec.limit)


def _parse_samples(spec: cpb.EvaluationSpec, limit: float | int | None
                   ) -> dict[str, list[int]] | None:
    if not spec.samples:
        return None
    if limit is not None:
        raise InvalidArgumentError("spec.samples: cannot be combined with spec.limit; "
                                   "drop one of them")
    samples = {name: list(doc.indices) for name, doc in spec.samples.items()}
    for name, indices in samples.items():
        if not indices or any(i < 0 for i in indices):
            raise InvalidArgumentError(
                f"spec.samples['{name}']: give one or more document indices >= 0")
    return samples


def _parse_batch_size(spec: cpb.EvaluationSpec) -> str:
    batch_size = spec.batch_size or "1"
    if not (batch_size.isdigit() and int(batch_size) > 0) and not (
            batch_size == "auto" or (batch_size.startswith("auto:")
                                     and batch_size[5:].isdigit())):
        raise InvalidArgumentError(
            f"spec.batch_size: '{batch_size}' is not a positive integer, 'auto' or 'auto:N'")
    return batch_size


def _parse_multiturn(spec: cpb.EvaluationSpec) -> bool | None:
    """lm-eval's rule: default True with a chat template, refused without one."""
    if spec.chat_template_name and not spec.apply_chat_template:
        raise InvalidArgumentError("spec.chat_template_name: needs spec.apply_chat_template")
    if not spec.HasField("fewshot_as_multiturn"):
        return True if spec.apply_chat_template else None
    if spec.fewshot_as_multiturn and not spec.apply_chat_template:
        raise InvalidArgumentError("spec.fewshot_as_multiturn: needs spec.apply_chat_template "
                                   "(few-shot turns are chat messages)")
    return spec.fewshot_as_multiturn


def parse_spec(spec: cpb.EvaluationSpec) -> ParsedSpec:
    """Validate a spec; INVALID_ARGUMENT naming the field on any problem."""
    if not spec.tasks or not any(t.strip() for t in spec.tasks):
        raise InvalidArgumentError("spec.tasks: name at least one task, group or tag")
    model_args = parse_kv_args(spec.model_args, field="spec.model_args")
    gen_kwargs = parse_kv_args(spec.gen_kwargs, field="spec.gen_kwargs")
    try:  # checked here too, so a bad value is refused whatever the job's tasks
        GenerationParams.from_gen_kwargs(gen_kwargs)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"spec.{exc.message}") from exc
    metadata = parse_kv_args(spec.metadata, field="spec.metadata")
    limit = _parse_limit(spec)
    samples = _parse_samples(spec, limit)
    num_fewshot = spec.num_fewshot if spec.HasField("num_fewshot") else None
    if num_fewshot is not None and num_fewshot < 0:
        raise InvalidArgumentError("spec.num_fewshot: must be >= 0")
    seeds = dict(DEFAULT_SEEDS)
    for name in DEFAULT_SEEDS:
        if spec.seeds.HasField(name):
            seeds[name] = getattr(spec.seeds, name)
    bootstrap = spec.bootstrap_iters if spec.HasField("bootstrap_iters") else \
        DEFAULT_BOOTSTRAP_ITERS
    if bootstrap < 0:
        raise InvalidArgumentError("spec.bootstrap_iters: must be >= 0")
    check_price_table(spec.price_table, "spec.price_table")
    for i, address in enumerate(spec.worker_addresses):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidArgumentError(
                f"spec.worker_addresses[{i}]: '{address}' is not host:port")
    return ParsedSpec(spec, model_args, gen_kwargs, metadata, limit, num_fewshot, seeds,
                      bootstrap, _parse_batch_size(spec), samples, _parse_multiturn(spec))
