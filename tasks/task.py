"""A configured task: docs, prompt fields, few-shot contexts and model requests."""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from jinja2 import TemplateError

from evalfleet.common.request_kind import OutputType, RequestKind
from evalfleet.tasks.config import TaskConfig
from evalfleet.tasks.dataset import DatasetSource, splits_read
from evalfleet.tasks.errors import TaskError, config_error
from evalfleet.tasks.filters import FilterPipeline, get_filter
from evalfleet.tasks.metric_config import MetricConfig, default_metric, parse_metric_list
from evalfleet.tasks.prompt import Message, ends_with_whitespace, maybe_delimit, qa_turn, render
from evalfleet.tasks.protocol import EvalTask
from evalfleet.tasks.request import Request
from evalfleet.tasks.samplers import SAMPLERS
from evalfleet.tasks.templating import render as render_template
from evalfleet.tasks.yaml_loader import describe

log = structlog.get_logger(__name__)
Doc = dict[str, Any]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_list(docs: Any) -> list[Doc]:
    return docs if isinstance(docs, list) else list(docs)


class Task(EvalTask):
    """One leaf task built from a validated config (see ``TaskManager.load``)."""

    def __init__(
        self, cfg: TaskConfig, data_dir: Path | None = None, metadata: dict | None = None
    ) -> None:
        self.cfg = cfg
        self.name: str = cfg.task  # type: ignore[assignment]
        self.alias: str | None = cfg.task_alias
        meta = cfg.metadata or {}
        self.version = meta.get("version", "Yaml")
        self.output_type: OutputType = cfg.output_type
        self.process_results_fn: Callable | None = cfg.process_results
        self.metric_list: list[MetricConfig] = parse_metric_list(
            cfg.metric_list, cfg.output_type, cfg.source,
            custom_results=cfg.process_results is not None,
        )
        self.filter_list: list[FilterPipeline] = self._parse_filters()
        self.effective_num_fewshot: int = cfg.num_fewshot or 0
        self.source = DatasetSource(cfg, data_dir, metadata)
        self._eval_docs: list[Doc] | None = None
        self._features: list[str] | None = None
        self._fewshot_pool: list[Doc] | None = None
        self.multiple_input = 0
        self.multiple_target = 0
        self._probed = False

    @property
    def unsafe_code(self) -> bool:
        """Whether scoring runs model-generated code (needs --confirm_run_unsafe_code)."""
        return bool(self.cfg.unsafe_code)

    # ------------------------------------------------------------------ config views
    @property
    def config(self) -> dict[str, Any]:
        """The merged config as an lm-eval-like dict (callables as source text, no None)."""
        out = {}
        for key, value in vars(self.cfg).items():
            if key in ("fewshot", "source") or value is None:
                continue
            out[key] = describe(value)
        return out

    @property
    def task_file(self) -> Path | None:
        """The YAML file the task's config was read from."""
        return self.cfg.source

    def origin_lines(self) -> list[str]:
        """Its YAML file, and its dataset, split and document count."""
        cfg = self.cfg
        return [f"yaml: {cfg.source}",
                f"dataset: {cfg.dataset_path} / {cfg.dataset_name or 'default'} split "
                f"{self.eval_split} ({len(self.all_eval_docs())} docs)"]

    def predicting_only(self) -> Task:
        """A copy whose only metric is ``bypass``, in its config too (as lm-eval's
        ``override_metric``); documents already read are shared."""
        clone = copy.copy(self)
        clone.metric_list = [default_metric("bypass")]
        clone.process_results_fn = None
        clone.cfg = dataclasses.replace(self.cfg, metric_list=[{"metric": "bypass"}],
                                        process_results="process_results")  # type: ignore[arg-type]
        return clone

    def _parse_filters(self) -> list[FilterPipeline]:
        raw = self.cfg.filter_list
        if raw is None:
            return [FilterPipeline("none", [("take_first", {})])]
        pipelines = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict) or "name" not in entry or "filter" not in entry:
                raise config_error(
                    self.cfg.source, f"filter_list[{i}]", "entry needs 'name' and 'filter'"
                )
            steps = []
            for j, fn in enumerate(entry["filter"] or []):
                key = f"filter_list[{i}].filter[{j}]"
                if not isinstance(fn, dict) or "function" not in fn:
                    raise config_error(self.cfg.source, key, "step needs 'function'")
                if not callable(fn["function"]):  # a class given as !function is used as is
                    try:
                        get_filter(fn["function"])
                    except KeyError as err:
                        raise config_error(self.cfg.source, key, err.args[0]) from None
                steps.append((fn["function"], {k: v for k, v in fn.items() if k != "function"}))
            pipelines.append(FilterPipeline(entry["name"], steps))
        return pipelines

    # ------------------------------------------------------------------ docs
    @property
    def eval_split(self) -> str:
        """The evaluated split (test_split, else validation_split)."""
        split = self.cfg.test_split or self.cfg.validation_split
        if split is None:
            raise config_error(
                self.cfg.source, "test_split", "task has no test or validation split"
            )
        return split

    def require_data(self, num_fewshot: int | None) -> None:
        """Fail at once (``DataNotFoundError``) when a split this task reads with
        ``num_fewshot`` (the job's override) cannot be had; reads no documents."""
        cfg, fs = self.cfg, self.cfg.fewshot
        keys = {"test_split": cfg.test_split, "validation_split": cfg.validation_split,
                "training_split": cfg.training_split, "fewshot_split": fs.split,
                "fewshot_config": {"samples": fs.samples} if cfg.fewshot_config else None}
        self.source.require(splits_read(keys, self.resolve_num_fewshot(num_fewshot)))

    def _processed(self, split: str, process_docs: Callable | None) -> Any:
        raw = self.source.split(split)
        if process_docs is None:
            return raw
        try:
            return process_docs(raw)
        except TaskError:
            raise
        except Exception as err:  # noqa: BLE001 - user code
            raise config_error(self.cfg.source, "process_docs", f"failed: {err!r}") from None

    def all_eval_docs(self) -> list[Doc]:
        """Every doc of the evaluated split, after ``process_docs``."""
        if self._eval_docs is None:
            docs = self._processed(self.eval_split, self.cfg.process_docs)
            features = getattr(docs, "column_names", None)
            self._eval_docs = _as_list(docs)
            if features is None:
                features = list(self._eval_docs[0]) if self._eval_docs else []
            self._features = list(features)
            self._probe()
        return self._eval_docs

    def _documents_phrase(self, count: int) -> str:
        return f"the {count} documents of split {self.eval_split!r}"

    @property
    def features(self) -> list[str]:
        """Column names of the evaluated split (decides field-name vs template)."""
        if self._features is None:
            self.all_eval_docs()
        return self._features or []

    def _probe(self) -> None:
        """Detect multiple-input / multiple-target from the first doc, like lm-eval."""
        if self._probed or not self._eval_docs:
            return
        self._probed = True
        doc = self._eval_docs[0]
        text = self.doc_to_text(doc)
        target = self.doc_to_target(doc)
        if self.cfg.doc_to_choice is not None:
            choices = self.doc_choices(doc)
            if isinstance(text, int) and isinstance(choices, list):
                self.multiple_input = len(choices)
        if isinstance(target, list):
            self.multiple_target = len(target)

    def fewshot_pool(self) -> list[Doc]:
        """Docs few-shot examples are drawn from (lm-eval's ``fewshot_docs``)."""
        if self._fewshot_pool is None:
            fs, cfg = self.cfg.fewshot, self.cfg
            if fs.split is not None:
                pool = self._processed(fs.split, fs.process_docs)
            elif cfg.fewshot_config is not None and fs.samples is not None:
                pool = fs.samples() if callable(fs.samples) else fs.samples
            elif cfg.training_split is not None:
                pool = self._processed(cfg.training_split, cfg.process_docs)
            elif cfg.validation_split is not None:
                pool = self._processed(cfg.validation_split, cfg.process_docs)
            else:
                pool = self.all_eval_docs()
            self._fewshot_pool = _as_list(pool)
        return self._fewshot_pool

    # ------------------------------------------------------------------ doc fields
    def _template(self, key: str, template: str, doc: Doc) -> str:
        try:
            return render_template(template, doc)
        except TemplateError as err:  # a SecurityError of the sandbox too
            raise config_error(
                self.cfg.source, key, f"template error ({type(err).__name__}: {err})"
            ) from None
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as err:
            raise config_error(  # e.g. {{ 1/0 }}: the document's data and the template disagree
                self.cfg.source, key, f"template failed on document ({type(err).__name__}: {err})"
            ) from None

    def _call(self, key: str, fn: Callable, doc: Doc) -> Any:
        try:
            return fn(doc)
        except Exception as err:  # noqa: BLE001 - user code
            raise config_error(self.cfg.source, key, f"function failed: {err!r}") from None

    def _field(self, key: str, spec: Any, doc: Doc) -> Any:
        """Resolve a field name or template; None for an absent spec."""
        if spec in self.features:
            return doc[spec]
        return self._template(key, spec, doc)

    def doc_to_text(self, doc: Doc, spec: Any = None) -> Any:
        """The question text (an int for multiple-input tasks)."""
        spec = self.cfg.doc_to_text if spec is None else spec
        if isinstance(spec, int):
            return spec
        if isinstance(spec, str):
            if spec in self.features:
                return doc[spec]
            text = self._template("doc_to_text", spec, doc)
            if text.isdigit() and self.cfg.doc_to_choice is not None:
                return ast.literal_eval(text)
            return text
        if callable(spec):
            return self._call("doc_to_text", spec, doc)
        raise config_error(self.cfg.source, "doc_to_text", f"unsupported value {spec!r}")

    def doc_target(self, doc: Doc, spec: Any = None) -> Any:
        """The target: an index, a string, or a list (multiple targets)."""
        spec = self.cfg.doc_to_target if spec is None else spec
        if isinstance(spec, int):
            return spec
        if isinstance(spec, str):
            if spec in self.features:
                return doc[spec]
            text = self._template("doc_to_target", spec, doc)
            if text.isdigit() and self.cfg.doc_to_choice is not None:
                return ast.literal_eval(text)
            if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
                try:
                    return ast.literal_eval(text)
                except (SyntaxError, ValueError):
                    return text
            return text
        if isinstance(spec, list):
            return spec
        if callable(spec):
            return self._call("doc_to_target", spec, doc)
        raise config_error(self.cfg.source, "doc_to_target", f"unsupported value {spec!r}")

    doc_to_target = doc_target

    def doc_choices(self, doc: Doc, spec: Any = None) -> list[str] | None:
        """The answer choices, or None when the task has no ``doc_to_choice``."""
        spec = self.cfg.doc_to_choice if spec is None else spec
        if spec is None:
            return None
        if isinstance(spec, str):
            if spec in self.features:
                return doc[spec]
            text = self._template("doc_to_choice", spec, doc)
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                raise config_error(
                    self.cfg.source, "doc_to_choice", f"rendered {text[:80]!r}, not a list literal"
                ) from None
        if isinstance(spec, list):
            return spec
        if isinstance(spec, dict):
            return list(spec.values())
        if callable(spec):
            return self._call("doc_to_choice", spec, doc)
        raise config_error(self.cfg.source, "doc_to_choice", f"unsupported value {spec!r}")

    def doc_gold(self, doc: Doc) -> int | list[int]:
        """Gold choice index as lm-eval's process_results computes it (-100 when invalid)."""
        choices = self.doc_choices(doc) or []
        self.all_eval_docs()
        gold = self.doc_to_text(doc) if self.multiple_input else self.doc_target(doc)
        if isinstance(gold, list):
            return [i if i < len(choices) else -100 for i in gold]
        if isinstance(gold, int):
            return gold if gold < len(choices) else -100
        if isinstance(gold, str):
            return choices.index(gold) if gold in choices else -100
        return -100

    def doc_to_prefix(self, doc: Doc) -> str | None:
        """The rendered ``gen_prefix`` (None when unset)."""
        if self.cfg.gen_prefix is None:
            return None
        return self._field("gen_prefix", self.cfg.gen_prefix, doc)

    @staticmethod
    def _resolve(doc: Doc, spec: str | None) -> str | None:
        if spec:
            return doc[spec] if spec in doc else render_template(spec, doc)
        return None

    # ------------------------------------------------------------------ prompts
    def resolve_num_fewshot(self, num_fewshot: int | None) -> int:
        """The CLI override rule: a YAML ``num_fewshot: 0`` wins; unset means 0."""
        configured = self.cfg.num_fewshot
        if num_fewshot is not None:
            return configured if configured == 0 else num_fewshot
        return configured or 0

    def context_messages(
        self, doc: Doc, num_fewshot: int, sampler: Any, system_instruction: str | None = None
    ) -> tuple[list[Message], list[list[Message]] | None]:
        """Shared prompt messages, plus per-choice eval turns for multiple-input tasks."""
        cfg, fs = self.cfg, self.cfg.fewshot
        messages: list[Message] = []
        try:
            description = self._resolve(doc, cfg.description) or ""
        except TemplateError as err:
            raise config_error(cfg.source, "description", f"template error: {err}") from None
        system_prompt = maybe_delimit(system_instruction, description, cfg.fewshot_delimiter)
        if system_prompt:
            messages.append(Message("system", system_prompt))
        if num_fewshot > 0:
            eval_doc = doc if fs.split == cfg.test_split else None
            for shot in sampler.sample(num_fewshot, eval_doc):
                q = self.doc_to_text(shot, fs.doc_to_text)
                c = self.doc_choices(shot, fs.doc_to_choice) if fs.doc_to_choice else None
                a = self.doc_target(shot, fs.doc_to_target)
                prefix = self._resolve(shot, fs.gen_prefix)
                if self.multiple_input:
                    q, c = c[q], None  # type: ignore[index]
                messages += qa_turn(q, c, a, prefix, fs.target_delimiter, fs.fewshot_delimiter)
        gen_prefix = self.doc_to_prefix(doc)
        if self.multiple_input:
            inputs = self.doc_choices(doc) or []
            return messages, [qa_turn(q, gen_prefix=gen_prefix, tgt_delim="") for q in inputs]
        q = self.doc_to_text(doc)
        c = self.doc_choices(doc) if cfg.doc_to_choice else None
        messages += qa_turn(q, c, None, gen_prefix, cfg.target_delimiter, "")
        return messages, None

    def fewshot_context(
        self,
        doc: Doc,
        num_fewshot: int,
        sampler: Any = None,
        system_instruction: str | None = None,
        chat_template: Callable | None = None,
        fewshot_as_multiturn: bool = False,
    ) -> str | list[str]:
        """The rendered prompt (a list of prompts for multiple-input tasks)."""
        shared, per_input = self.context_messages(doc, num_fewshot, sampler, system_instruction)
        if chat_template is not None:
            chat_template = partial(
                chat_template, add_generation_prompt=not self.doc_to_prefix(doc)
            )
        if per_input is not None:
            return [
                render(shared + turn, chat_template, fewshot_as_multiturn) for turn in per_input
            ]
        return render(shared, chat_template, fewshot_as_multiturn)

    def make_sampler(self, seed: int | None) -> Any:
        """A fresh sampler over the few-shot pool seeded with ``seed``."""
        fs = self.cfg.fewshot
        name = fs.sampler if self.cfg.fewshot_config else "default"
        return SAMPLERS[name](self.fewshot_pool(), seed, fs.fewshot_indices)

    # ------------------------------------------------------------------ requests
    def build_requests(
        self,
        *,
        limit: int | float | None = None,
        samples: Sequence[int] | None = None,
        num_fewshot: int | None = None,
        fewshot_seed: int = 1234,
        system_instruction: str | None = None,
        apply_chat_template: bool = False,
        gen_kwargs: dict | None = None,
        chat_template: Callable | None = None,
        fewshot_as_multiturn: bool = False,
    ) -> list[Request]:
        """lm-eval's requests for the first ``limit`` docs (or the ``samples`` indices), in
        lm-eval's order.

        ``apply_chat_template`` needs ``chat_template(messages, add_generation_prompt=...)``
        (the model tokenizer's template); without one it raises NotImplementedError.
        """
        if apply_chat_template and chat_template is None:
            raise NotImplementedError(
                "apply_chat_template needs the model's chat_template callable"
            )
        if self.cfg.doc_to_image is not None or self.cfg.doc_to_audio is not None:
            raise config_error(
                self.cfg.source, "doc_to_image", "multimodal tasks are not supported"
            )
        if gen_kwargs and self.output_type == OutputType.GENERATE_UNTIL:
            assert self.cfg.generation_kwargs is not None
            self.cfg.generation_kwargs.update(gen_kwargs)
        shots = self.resolve_num_fewshot(num_fewshot)
        self.effective_num_fewshot = shots
        docs = self.eval_docs(limit, samples)
        sampler = self.make_sampler(fewshot_seed) if shots > 0 else None
        template = chat_template if apply_chat_template else None
        requests: list[Request] = []
        for doc_id, doc in docs:
            ctx = self.fewshot_context(
                doc, shots, sampler, system_instruction, template, fewshot_as_multiturn
            )
            requests += self.construct_requests(doc_id, doc, ctx, apply_chat_template)
        return requests

    def _metric_names(self) -> list[str]:
        return [m.name for m in self.metric_list]

    def construct_requests(
        self, doc_id: int, doc: Doc, ctx: str | list[str], apply_chat_template: bool = False
    ) -> list[Request]:
        """The requests of one doc given its context(s)."""
        cfg = self.cfg
        make = partial(Request, self.name, doc_id, repeats=cfg.repeats)
        if self.output_type == OutputType.LOGLIKELIHOOD:
            return [make(0, RequestKind.LOGLIKELIHOOD, (ctx, self.doc_target(doc)))]
        if self.output_type == OutputType.LOGLIKELIHOOD_ROLLING:
            return [make(0, RequestKind.LOGLIKELIHOOD_ROLLING, (self.doc_target(doc),))]
        if self.output_type == OutputType.GENERATE_UNTIL:
            return [make(0, RequestKind.GENERATE_UNTIL,
                         (ctx, copy.deepcopy(cfg.generation_kwargs)))]
        choices = self.doc_choices(doc) or []
        delim = cfg.target_delimiter
        if apply_chat_template:
            keep = cfg.gen_prefix and not ends_with_whitespace(cfg.gen_prefix)
            delim = cfg.target_delimiter if keep else ""
        if self.multiple_input:
            cont = self.doc_target(doc)
            args = [(c, f"{delim}{cont}") for c in ctx]
        else:
            args = [(ctx, f"{delim}{choice}") for choice in choices]
        if "acc_mutual_info" in self._metric_names():
            args += [("", f"{delim}{choice}") for choice in choices]
        return [make(i, RequestKind.LOGLIKELIHOOD, arg) for i, arg in enumerate(args)]

    # ------------------------------------------------------------------ results side
    def apply_filters(
        self, responses_per_doc: Sequence[Sequence[Any]], docs: Sequence[Doc] | None = None
    ) -> dict[str, list]:
        """Filter name -> one filtered value per entry.

        Each entry is the response list (one per repeat) of one request; for generation tasks
        that is one entry per doc. ``docs`` (parallel to the entries) is needed by filters that
        read the doc, e.g. ``multi_choice_regex``.
        """
        return {p.name: p.apply(responses_per_doc, docs) for p in self.filter_list}

    def sample_record_fields(self, doc_id: int, doc: Doc) -> dict[str, Any]:
        """Fields of lm-eval's samples JSONL record that depend only on the doc."""
        target = self.doc_target(doc)
        return {
            "doc_id": doc_id,
            "doc": doc,
            "target": target,
            "doc_hash": _hash(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
            "target_hash": _hash(str(target)),
        }

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, output_type={str(self.output_type)!r})"
