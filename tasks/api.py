"""evalfleet's Python task API: lm-eval's ``Task`` methods for tasks written as classes.

A class written against ``lm_eval.api.task.Task`` runs in evalfleet unchanged (lm-eval
installed), or with its imports pointed here (``from evalfleet.tasks.api import Task, mean,
rf``) when lm-eval is absent. lm-eval 0.3-style request factories (``rf.greedy_until``,
``rf.loglikelihood``, ...) work here too. Requests are still built on the coordinator and metrics
computed by evalfleet; the dataset comes from evalfleet's data mirror when the class does not
load it itself.
"""

from __future__ import annotations

import abc
import contextvars
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalfleet.common.request_kind import RequestKind
from evalfleet.scoring import aggregations as _agg
from evalfleet.scoring.reductions import as_f64
from evalfleet.scoring.reductions import mean as _mean

#: the data mirror the task being built reads (set by the task manager)
DATA_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("evalfleet_data_dir",
                                                                       default=None)


# ---------------------------------------------------------------------- aggregations
def mean(arr: Iterable[float]) -> float:
    """lm-eval's ``mean`` (``sum / len``)."""
    return _mean(as_f64(list(arr)))


def median(arr: Iterable[float]) -> float:
    """lm-eval's ``median`` (upper median)."""
    return _agg.agg_median(list(arr))


def perplexity(items: Iterable[float]) -> float:
    """``exp(-mean(ll))``."""
    return _agg.agg_perplexity(list(items))


def weighted_perplexity(items: Iterable[tuple[float, float]]) -> float:
    """``exp(-Σll / Σcount)``."""
    return _agg.agg_weighted_perplexity(list(items))


def bits_per_byte(items: Iterable[tuple[float, float]]) -> float:
    """``-Σll / (Σbytes · ln 2)``."""
    return _agg.agg_bits_per_byte(list(items))


def f1_score(items: Iterable[tuple[Any, Any]]) -> float:
    """Binary F1 over ``(gold, pred)`` items."""
    return _agg.agg_f1(list(items))


def matthews_corrcoef(items: Iterable[tuple[Any, Any]]) -> float:
    """MCC over ``(gold, pred)`` items."""
    return _agg.agg_mcc(list(items))


def acc_all(items: Iterable[tuple[Any, dict]]) -> float:
    """Per-question all-correct accuracy over ``(pred, doc)`` items."""
    return _agg.agg_acc_all(list(items))


# ---------------------------------------------------------------------- requests
@dataclass
class Instance:
    """One model request (lm-eval's ``Instance``): ``arguments`` as the request type needs
    (a :class:`RequestKind`, or its string as lm-eval's classes give it)."""

    request_type: RequestKind | str
    doc: Any
    arguments: tuple
    idx: int = 0
    metadata: tuple = (None, None, None)
    resps: list = field(default_factory=list)
    filtered_resps: dict = field(default_factory=dict)

    @property
    def args(self) -> tuple:
        """The arguments as a tuple."""
        return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)


class _RequestFactory:
    """lm-eval 0.3's ``rf``: ``rf.greedy_until(ctx, until)``, ``rf.loglikelihood(ctx, cont)``,
    ``rf.loglikelihood_rolling(text)``, and 0.4's ``rf.generate_until(ctx, gen_kwargs)``."""

    @staticmethod
    def loglikelihood(context: str, continuation: str) -> Instance:
        return Instance(RequestKind.LOGLIKELIHOOD, None, (context, continuation))

    @staticmethod
    def loglikelihood_rolling(text: str) -> Instance:
        return Instance(RequestKind.LOGLIKELIHOOD_ROLLING, None, (text,))

    @staticmethod
    def generate_until(context: str, gen_kwargs: Mapping[str, Any] | None = None) -> Instance:
        return Instance(RequestKind.GENERATE_UNTIL, None, (context, dict(gen_kwargs or {})))

    @classmethod
    def greedy_until(cls, context: str, until: Any = None) -> Instance:
        """0.3's greedy generation: ``until`` is a stop string, a list of them, or kwargs."""
        if isinstance(until, Mapping):
            return cls.generate_until(context, until)
        stops = [until] if isinstance(until, str) else list(until or [])
        return cls.generate_until(context, {"until": stops})


rf = _RequestFactory()


# ---------------------------------------------------------------------- the Task base class
class _Config(dict):
    """A task's config: a dict whose keys also read as attributes (lm-eval's TaskConfig)."""

    def __getattr__(self, key: str) -> Any:
        return self.get(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class Task(abc.ABC):  # noqa: B024 - lm-eval's method set, most with defaults
    """lm-eval's ``Task`` API (``lm_eval.api.task.Task``) for evalfleet.

    Subclasses define ``doc_to_text``, ``doc_to_target``, ``construct_requests``,
    ``process_results`` and ``aggregation`` (and usually the ``has_*_docs`` / ``*_docs``
    pairs); ``higher_is_better`` defaults to True for every aggregated metric.
    """

    VERSION: int | str | None = None
    DATASET_PATH: str | None = None
    DATASET_NAME: str | None = None
    OUTPUT_TYPE: str | None = None

    def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
                 download_mode: Any = None, config: Mapping | None = None) -> None:
        self.download(data_dir, cache_dir, download_mode)
        self._training_docs: list | None = None
        self._fewshot_docs: list | None = None
        self._instances: list | None = None
        self._config = _Config(config or {})
        self.fewshot_rnd: random.Random | None = None

    def download(self, data_dir: str | None = None, cache_dir: str | None = None,
                 download_mode: Any = None) -> None:
        """``self.dataset``: split name -> docs, from evalfleet's mirror (``DATASET_PATH`` /
        ``DATASET_NAME``) or ``datasets.load_dataset``; splits load when first read."""
        from evalfleet.tasks.class_task import mirror_dataset

        self.dataset = mirror_dataset(self.DATASET_PATH, self.DATASET_NAME, DATA_DIR.get(),
                                      type(self).__name__)

    @property
    def config(self) -> _Config:
        """The task's config (from its YAML, when it has one)."""
        return self._config

    def get_config(self, key: str) -> Any:
        return self._config.get(key)

    def set_config(self, key: str, value: Any, update: bool = False) -> None:
        if update:
            self._config.setdefault(key, {}).update(value)
        else:
            self._config[key] = value

    def has_training_docs(self) -> bool:
        return False

    def has_validation_docs(self) -> bool:
        return False

    def has_test_docs(self) -> bool:
        return False

    def training_docs(self) -> Iterable:
        return []

    def validation_docs(self) -> Iterable:
        return []

    def test_docs(self) -> Iterable:
        return []

    def fewshot_docs(self) -> Iterable:
        if self.has_training_docs():
            return self.training_docs()
        if self.has_validation_docs():
            return self.validation_docs()
        return self.test_docs()

    @property
    def eval_docs(self) -> Any:
        if self.has_test_docs():
            return self.test_docs()
        if self.has_validation_docs():
            return self.validation_docs()
        raise ValueError(f"Task dataset (path={self.DATASET_PATH}, name={self.DATASET_NAME}) "
                         "must have valid or test docs!")

    def fewshot_examples(self, k: int, rnd: random.Random) -> list:
        if self._training_docs is None:
            self._training_docs = list(self.training_docs())
        return rnd.sample(self._training_docs, k)

    def doc_to_text(self, doc: Any) -> str:
        raise NotImplementedError

    def doc_to_target(self, doc: Any) -> Any:
        raise NotImplementedError

    def doc_to_prefix(self, doc: Any) -> str:
        return ""

    def set_fewshot_seed(self, seed: int | None = None) -> None:
        self.fewshot_rnd = random.Random(seed)

    def fewshot_context(self, doc: Any, num_fewshot: int, rnd: random.Random | None = None,
                        description: str | None = None, **kwargs: Any) -> str:
        """lm-eval's ``Task.fewshot_context``: description, shots, then the question."""
        rnd = rnd or self.fewshot_rnd
        if rnd is None:
            raise ValueError("A `random.Random` generator argument must be provided to `rnd`")
        if num_fewshot == 0:
            labeled = ""
        else:
            if self.has_training_docs():
                shots = self.fewshot_examples(k=num_fewshot, rnd=rnd)
            else:
                if self._fewshot_docs is None:
                    self._fewshot_docs = list(self.validation_docs() if self.has_validation_docs()
                                              else self.test_docs())
                shots = [x for x in rnd.sample(self._fewshot_docs, num_fewshot + 1)
                         if x != doc][:num_fewshot]
            labeled = "\n\n".join(self.doc_to_text(d) + self.doc_to_target(d)
                                  for d in shots) + "\n\n"
        return (description or "") + labeled + self.doc_to_text(doc)

    def construct_requests(self, doc: Any, ctx: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def process_results(self, doc: Any, results: list) -> dict[str, Any]:
        raise NotImplementedError

    def aggregation(self) -> dict[str, Callable]:
        raise NotImplementedError

    def higher_is_better(self) -> dict[str, bool]:
        return {name: True for name in self.aggregation()}

    @classmethod
    def count_bytes(cls, doc: str) -> int:
        return len(doc.encode("utf-8"))

    @classmethod
    def count_words(cls, doc: str) -> int:
        return len(re.split(r"\s+", doc))


__all__ = ["DATA_DIR", "Instance", "Task", "acc_all", "bits_per_byte", "f1_score",
           "matthews_corrcoef", "mean", "median", "perplexity", "rf", "weighted_perplexity"]
