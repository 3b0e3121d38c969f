"""Validated task configuration: lm-eval's TaskConfig / FewshotConfig keys and defaults."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evalfleet.common.request_kind import OutputType, UnknownKindError
from evalfleet.tasks.errors import config_error
from evalfleet.tasks.yaml_loader import resolve_functions

OUTPUT_TYPES = tuple(OutputType)
#: keys accepted in a task YAML but dropped before building (structure / bookkeeping only)
STRUCTURAL_KEYS = ("tag", "group", "task_list")
FEWSHOT_KEYS = (
    "sampler", "split", "process_docs", "fewshot_indices", "samples", "doc_to_text",
    "doc_to_choice", "doc_to_target", "gen_prefix", "fewshot_delimiter", "target_delimiter",
)  # fmt: skip


def default_gen_kwargs(until: str | list[str] | None, max_gen_toks: int = 256) -> dict[str, Any]:
    """lm-eval's default greedy generation kwargs."""
    gen: dict[str, Any] = {"temperature": 0.0, "do_sample": False, "max_gen_toks": max_gen_toks}
    gen["until"] = [] if until is None else ([until] if isinstance(until, str) else until)
    return gen


@dataclass
class FewshotSpec:
    """Formatting of few-shot examples; unset fields inherit the task's."""

    sampler: str = "default"
    split: str | None = None
    process_docs: Callable | None = None
    fewshot_indices: list[int] | None = None
    samples: list[dict] | Callable | None = None
    doc_to_text: Any = None
    doc_to_choice: Any = None
    doc_to_target: Any = None
    gen_prefix: str | None = None
    fewshot_delimiter: str | None = None
    target_delimiter: str | None = None


@dataclass
class TaskConfig:
    """A task's merged configuration (same fields and defaults as lm-eval 0.4.13)."""

    task: str | None = None
    task_alias: str | None = None
    custom_dataset: Callable | None = None
    dataset_path: str | None = None
    dataset_name: str | None = None
    dataset_kwargs: dict | None = None
    training_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    fewshot_split: str | None = None
    process_docs: Callable | None = None
    doc_to_text: Any = None
    doc_to_target: Any = None
    doc_to_image: Any = None
    doc_to_audio: Any = None
    unsafe_code: bool = False
    doc_to_choice: Any = None
    process_results: Callable | None = None
    use_prompt: str | None = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot_config: dict | None = None
    num_fewshot: int | None = None
    metric_list: list | None = None
    output_type: OutputType = OutputType.GENERATE_UNTIL
    generation_kwargs: dict | None = None
    repeats: int = 1
    filter_list: list | None = None
    should_decontaminate: bool = False
    doc_to_decontamination_query: str | None = None
    gen_prefix: str | None = None
    metadata: dict | None = None
    fewshot: FewshotSpec = field(default_factory=FewshotSpec)
    source: Path | None = None


TASK_KEYS = frozenset(f.name for f in fields(TaskConfig)) - {"fewshot", "source"}


def _check_type(source: Any, key: str, value: Any, types: tuple, what: str) -> None:
    if value is not None and not isinstance(value, types):
        raise config_error(source, key, f"expected {what}, got {type(value).__name__} {value!r}")


def build_config(raw: dict[str, Any], source: Path | None) -> TaskConfig:
    """Validate a merged raw task dict, resolve ``!function`` refs and apply lm-eval defaults."""
    raw = {k: v for k, v in raw.items() if k not in STRUCTURAL_KEYS}
    if "class" in raw:
        raise config_error(source, "class", "python-class tasks are not supported")
    unknown = sorted(set(raw) - TASK_KEYS)
    if unknown:
        raise config_error(source, unknown[0], "unknown key (not an lm-eval task config key)")
    if not isinstance(raw.get("task"), str):
        raise config_error(source, "task", "missing or not a string")
    raw = resolve_functions(copy.deepcopy(raw))
    cfg = TaskConfig(**raw, source=source)
    cfg.output_type = parse_output_type(cfg.output_type, source)
    _validate(cfg, source)
    if cfg.generation_kwargs is not None:
        cfg.generation_kwargs = dict(cfg.generation_kwargs)
        if "temperature" in cfg.generation_kwargs:
            cfg.generation_kwargs["temperature"] = float(cfg.generation_kwargs["temperature"])
        cfg.generation_kwargs.setdefault("until", [cfg.fewshot_delimiter])
    elif cfg.output_type == OutputType.GENERATE_UNTIL:
        cfg.generation_kwargs = default_gen_kwargs(cfg.fewshot_delimiter)
    cfg.fewshot = _fewshot_spec(cfg, source)
    return cfg


def parse_output_type(value: Any, source: Any) -> OutputType:
    """A task file's ``output_type`` as the enum; a TaskError naming the file and key if it
    names none."""
    try:
        return OutputType.parse(value)
    except UnknownKindError:
        raise config_error(source, "output_type",
                           f"{value!r} is not one of {', '.join(OUTPUT_TYPES)}") from None


def _validate(cfg: TaskConfig, source: Any) -> None:
    for key in ("dataset_path", "dataset_name", "training_split", "validation_split",
                "test_split", "fewshot_split", "task_alias", "use_prompt"):  # fmt: skip
        _check_type(source, key, getattr(cfg, key), (str,), "a string")
    for key in ("target_delimiter", "fewshot_delimiter", "description"):
        _check_type(source, key, getattr(cfg, key), (str,), "a string")
    for key in ("dataset_kwargs", "generation_kwargs", "metadata", "fewshot_config"):
        _check_type(source, key, getattr(cfg, key), (dict,), "a mapping")
    _check_type(source, "filter_list", cfg.filter_list, (list,), "a list")
    if isinstance(cfg.num_fewshot, bool) or not isinstance(cfg.num_fewshot, int | None) \
            or (cfg.num_fewshot is not None and cfg.num_fewshot < 0):
        raise config_error(source, "num_fewshot",
                           f"expected a non-negative integer, got {cfg.num_fewshot!r}")
    if isinstance(cfg.repeats, bool) or not isinstance(cfg.repeats, int) or cfg.repeats < 1:
        raise config_error(source, "repeats", f"expected a positive integer, got {cfg.repeats!r}")
    for key in ("process_docs", "process_results", "custom_dataset"):
        value = getattr(cfg, key)
        if value is not None and not callable(value):
            raise config_error(source, key, "expected a !function reference")
    if cfg.output_type == OutputType.MULTIPLE_CHOICE and cfg.doc_to_choice is None:
        raise config_error(source, "doc_to_choice", "required for output_type multiple_choice")
    if cfg.use_prompt is not None:
        raise config_error(source, "use_prompt", "promptsource prompts are not supported")
    if cfg.dataset_path is None and cfg.custom_dataset is None:
        raise config_error(source, "dataset_path", "missing (or give custom_dataset)")


def _fewshot_spec(cfg: TaskConfig, source: Any) -> FewshotSpec:
    raw = cfg.fewshot_config or {}
    unknown = sorted(set(raw) - set(FEWSHOT_KEYS))
    if unknown:
        raise config_error(source, f"fewshot_config.{unknown[0]}", "unknown key")
    values = {
        "split": cfg.fewshot_split,
        "process_docs": cfg.process_docs,
        "fewshot_delimiter": cfg.fewshot_delimiter,
        "target_delimiter": cfg.target_delimiter,
        "gen_prefix": cfg.gen_prefix,
        "doc_to_text": cfg.doc_to_text,
        "doc_to_choice": cfg.doc_to_choice,
        "doc_to_target": cfg.doc_to_target,
        **raw,
    }
    if values.get("sampler") is None:
        values["sampler"] = "default"
    if values["sampler"] not in ("default", "first_n"):
        raise config_error(
            source, "fewshot_config.sampler", f"unknown sampler {values['sampler']!r}"
        )
    return FewshotSpec(**values)
