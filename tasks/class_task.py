"""Tasks written as Python classes (YAML ``class: !function module.Class``), run the lm-eval
way: the class builds contexts and requests and scores each document; evalfleet plans, runs
the requests on its workers and aggregates.

Classes may subclass ``lm_eval.api.task.Task`` (lm-eval installed) or
``evalfleet.tasks.api.Task``. Their dataset comes from evalfleet's mirror
(``DATASET_PATH``/``DATASET_NAME``) unless the class loads it in its own ``download``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evalfleet.common.request_kind import OutputType, RequestKind
from evalfleet.tasks import api
from evalfleet.tasks.config import OUTPUT_TYPES, TaskConfig
from evalfleet.tasks.dataset import DatasetSource
from evalfleet.tasks.errors import TaskError, config_error
from evalfleet.tasks.filters import FilterPipeline
from evalfleet.tasks.metric_config import MetricConfig, default_metric
from evalfleet.tasks.protocol import EvalTask
from evalfleet.tasks.request import REQUEST_TYPES, Request
from evalfleet.tasks.yaml_loader import describe


class _LazySplits(Mapping):
    """``dataset[split]`` loads that split from the mirror (or the hub) on first use."""

    def __init__(self, source: DatasetSource) -> None:
        self.source = source

    def __getitem__(self, split: str) -> Any:
        return self.source.split(split)

    def __iter__(self) -> Iterator[str]:
        folder = self.source.folder
        if folder is not None and folder.is_dir():
            return iter(sorted({p.name.split(".")[0] for p in folder.iterdir()}))
        return iter(self.source._load_whole())

    def __len__(self) -> int:
        return sum(1 for _ in self)


def mirror_dataset(path: str | None, name: str | None, data_dir: Path | None,
                   owner: str) -> Mapping:
    """The splits of ``path``/``name`` as a lazy mapping (mirror first, then the hub)."""
    if not path:
        return {}
    cfg = TaskConfig(task=owner, dataset_path=path, dataset_name=name)
    return _LazySplits(DatasetSource(cfg, data_dir))


def _inherits_download(cls: type) -> bool:
    """Whether the class uses its base's ``download`` (lm-eval's hub loader or ours)."""
    for klass in cls.__mro__:
        if "download" in vars(klass):
            module = klass.__module__ or ""
            return module.startswith(("lm_eval.api", "evalfleet.tasks.api"))
    return True


def instantiate(cls: type, cfg: dict[str, Any], data_dir: Path | None, source: Path | None
                ) -> Any:
    """Build the task object as lm-eval's factory does (``cls(config=cfg)`` when accepted),
    with evalfleet's mirror as its dataset unless it loads its own."""
    if not isinstance(cls, type):
        raise config_error(source, "class", f"!function must name a class, got {cls!r}")
    target = cls
    if _inherits_download(cls):
        def download(self, *args: Any, **kwargs: Any) -> None:
            self.dataset = mirror_dataset(self.DATASET_PATH, self.DATASET_NAME, data_dir,
                                          cfg.get("task") or cls.__name__)

        target = type(cls.__name__, (cls,), {"download": download,
                                              "__module__": cls.__module__})
    token = api.DATA_DIR.set(data_dir)
    try:
        params = inspect.signature(target.__init__).parameters
        takes_config = "config" in params or any(
            p.kind is p.VAR_KEYWORD for p in params.values())
        return target(config=cfg) if takes_config else target()
    except TaskError:
        raise
    except Exception as err:  # noqa: BLE001 - user code
        raise config_error(source, "class", f"{cls.__name__}() failed: {err!r}") from None
    finally:
        api.DATA_DIR.reset(token)


def _accepted_kwargs(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords ``fn`` accepts (all of them when it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


class ClassTask(EvalTask):
    """A Python class task seen through the interface the planner and scorer use."""

    loads_own_docs = True

    def __init__(self, obj: Any, cfg: dict[str, Any], source: Path | None) -> None:
        self.obj = obj
        self.raw_cfg = cfg
        self.source = source
        self.name: str = cfg["task"]
        self.alias: str | None = cfg.get("task_alias")
        self.version = getattr(obj, "VERSION", None)
        meta = cfg.get("metadata")
        if isinstance(meta, dict) and "version" in meta:
            self.version = meta["version"]
        # the class's OUTPUT_TYPE when it declares one, else learnt from its first requests
        declared = getattr(obj, "OUTPUT_TYPE", None)
        self.output_type: OutputType | None = \
            OutputType(declared) if declared in OUTPUT_TYPES else None
        self.unsafe_code = bool(cfg.get("unsafe_code") or getattr(obj, "UNSAFE_CODE", False))
        self.filter_list = [FilterPipeline("none", [("take_first", {})])]
        self.process_results_fn = obj.process_results
        self.effective_num_fewshot = 0
        self.multiple_target = 0
        self._docs: list | None = None
        self.metric_list = self._metrics()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TaskError:
            raise
        except Exception as err:  # noqa: BLE001 - user code
            raise config_error(self.source, "class",
                               f"{type(self.obj).__name__}.{what} failed: {err!r}") from None

    def _metrics(self) -> list[MetricConfig]:
        aggregation = self._call("aggregation", self.obj.aggregation)
        try:
            hib = self.obj.higher_is_better()
        except NotImplementedError:
            hib = {}
        if not isinstance(aggregation, Mapping):
            raise config_error(self.source, "class",
                               "aggregation() must return {metric: function}")
        out = []
        for name, fn in aggregation.items():
            if not callable(fn):
                raise config_error(self.source, "class",
                                   f"aggregation() of {name!r} is not a function: {fn!r}")
            out.append(MetricConfig(name=name, aggregation=fn,
                                    higher_is_better=(hib or {}).get(name, True)))
        return out

    # ------------------------------------------------------------------ config views
    @property
    def config(self) -> dict[str, Any]:
        """The YAML config (callables as names), plus the version."""
        out = {k: describe(v) for k, v in self.raw_cfg.items() if v is not None}
        out["class"] = f"{type(self.obj).__module__}.{type(self.obj).__name__}"
        return out

    def doc_target(self, doc: Any) -> Any:
        return self._call("doc_to_target", self.obj.doc_to_target, doc)

    doc_to_target = doc_target

    def doc_choices(self, doc: Any) -> None:
        return None

    @property
    def task_file(self) -> Path | None:
        """The YAML file that names the class (``class: !function ...``)."""
        return self.source

    def origin_lines(self) -> list[str]:
        """Its YAML file, and its class and document count."""
        return [f"yaml: {self.source}",
                f"class: {self.config['class']} ({len(self.all_eval_docs())} docs)"]

    def predicting_only(self) -> ClassTask:
        """A copy whose only metric is ``bypass``, the class's ``process_results`` replaced (as
        lm-eval's ``override_metric``)."""
        clone = copy.copy(self)
        clone.metric_list = [default_metric("bypass")]
        clone.process_results_fn = lambda doc, results: {"bypass": None}
        return clone

    # ------------------------------------------------------------------ docs
    def require_data(self, num_fewshot: int | None) -> None:
        """Nothing to check ahead: the class reads its own documents."""

    def all_eval_docs(self) -> list:
        if self._docs is None:
            self._docs = list(self._call("eval_docs", lambda: self.obj.eval_docs))
        return self._docs

    def _documents_phrase(self, count: int) -> str:
        return f"its {count} documents"

    # ------------------------------------------------------------------ requests
    def resolve_num_fewshot(self, num_fewshot: int | None) -> int:
        """lm-eval's rule: a configured 0 wins; the CLI value otherwise; unset means 0."""
        configured = self.raw_cfg.get("num_fewshot")
        if num_fewshot is not None:
            return configured if configured == 0 else num_fewshot
        return configured or 0

    def build_requests(self, *, limit: int | float | None = None,
                       samples: Sequence[int] | None = None, num_fewshot: int | None = None,
                       fewshot_seed: int = 1234, system_instruction: str | None = None,
                       apply_chat_template: bool = False, gen_kwargs: dict | None = None,
                       chat_template: Any = None, fewshot_as_multiturn: bool = False
                       ) -> list[Request]:
        """The class's requests for the selected docs, in lm-eval's order."""
        obj = self.obj
        shots = self.resolve_num_fewshot(num_fewshot)
        self.effective_num_fewshot = shots
        if hasattr(obj, "set_config"):
            self._call("set_config", obj.set_config, key="num_fewshot", value=shots)
        self._call("set_fewshot_seed", obj.set_fewshot_seed, seed=fewshot_seed)
        repeats = int(self.raw_cfg.get("repeats") or 1)
        requests: list[Request] = []
        for doc_id, doc in self.eval_docs(limit, samples):
            ctx_kwargs = {"system_instruction": system_instruction,
                          "apply_chat_template": apply_chat_template,
                          "fewshot_as_multiturn": fewshot_as_multiturn,
                          "chat_template": chat_template,
                          "gen_prefix": obj.doc_to_prefix(doc)}
            ctx = self._call("fewshot_context", obj.fewshot_context, doc=doc, num_fewshot=shots,
                             **_accepted_kwargs(obj.fewshot_context, ctx_kwargs))
            req_kwargs = {"metadata": (self.name, doc_id, repeats),
                          "apply_chat_template": apply_chat_template,
                          "chat_template": chat_template}
            made = self._call("construct_requests", obj.construct_requests, doc=doc, ctx=ctx,
                              **_accepted_kwargs(obj.construct_requests, req_kwargs))
            requests += self._to_requests(doc_id, made, repeats)
        return requests

    def _to_requests(self, doc_id: int, made: Any, repeats: int) -> list[Request]:
        items = list(made) if isinstance(made, list | tuple) else [made]
        idxs = [getattr(i, "idx", 0) for i in items]
        renumber = len(set(idxs)) != len(idxs)  # 0.3-style rf requests all carry idx 0
        out = []
        for pos, item in enumerate(items):
            kind = getattr(item, "request_type", None)
            if kind not in REQUEST_TYPES:
                raise config_error(self.source, "class",
                                   f"construct_requests returned {item!r}, not a request "
                                   f"({', '.join(REQUEST_TYPES)})")
            kind = RequestKind(kind)
            args = item.args if hasattr(item, "args") else tuple(item.arguments)
            if kind == RequestKind.GENERATE_UNTIL:
                args = (args[0], dict(args[1]) if len(args) > 1 and args[1] else {})
            out.append(Request(self.name, doc_id, pos if renumber else item.idx, kind,
                               tuple(args), repeats=repeats))
        if out:
            first = out[0].request_type
            self.output_type = OutputType.MULTIPLE_CHOICE \
                if len(out) > 1 and first == RequestKind.LOGLIKELIHOOD else OutputType(first)
        return out

    # ------------------------------------------------------------------ results side
    def apply_filters(self, responses: Sequence[Sequence[Any]],
                      docs: Sequence[Any] | None = None) -> dict[str, list]:
        """lm-eval's default for class tasks: take the first response of each request."""
        return {p.name: p.apply(responses, docs) for p in self.filter_list}

    def __repr__(self) -> str:
        return f"ClassTask(name={self.name!r}, class={type(self.obj).__name__})"
