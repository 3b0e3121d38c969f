"""``EvalTask``: what the coordinator and the CLI use of a task, whatever wrote it.

Both kinds of leaf task implement it: YAML tasks (:class:`evalfleet.tasks.task.Task`, and its
``@format`` variants) and Python class tasks (:class:`evalfleet.tasks.class_task.ClassTask`).
Code outside the task engine types against this class and asks it, never ``hasattr``, which
kind it holds. What the two kinds share (the ``--limit``/``--samples`` selection of documents)
is written here once.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from evalfleet.common.request_kind import OutputType
from evalfleet.tasks.errors import SampleIndexError, TaskError
from evalfleet.tasks.filters import FilterPipeline
from evalfleet.tasks.metric_config import MetricConfig
from evalfleet.tasks.request import Request


class EvalTask(abc.ABC):
    """One leaf task: its documents, requests, filters and metrics."""

    #: Whether the task reads its own documents (a Python class's ``eval_docs``) rather than
    #: through evalfleet's data loader.
    loads_own_docs: ClassVar[bool] = False

    name: str
    alias: str | None
    version: Any
    #: lm-eval's output type; a class task without ``OUTPUT_TYPE`` learns it from its first
    #: requests (None until then).
    output_type: OutputType | None
    metric_list: list[MetricConfig]
    filter_list: list[FilterPipeline]
    #: The task's own per-document scoring (``process_results``), or None for the metric list.
    process_results_fn: Callable | None
    #: The few-shot count the last ``build_requests`` used.
    effective_num_fewshot: int
    #: How many gold answers a document has when it has several (lm-eval's multiple_target).
    multiple_target: int
    unsafe_code: bool

    # ------------------------------------------------------------------ where it comes from
    @property
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The task's config as lm-eval reports it in results' ``configs`` (JSON-friendly)."""

    @property
    @abc.abstractmethod
    def task_file(self) -> Path | None:
        """The task file (YAML) that defines the task, if any (for error messages)."""

    @abc.abstractmethod
    def origin_lines(self) -> list[str]:
        """Lines saying where the task comes from: its file, and its dataset split or class
        (``evalfleet tasks show``)."""

    @abc.abstractmethod
    def predicting_only(self) -> EvalTask:
        """lm-eval's ``--predict_only``: a copy of this task that computes no metric (its only
        one is bypass); this task is left as it is."""

    # ------------------------------------------------------------------ documents
    @abc.abstractmethod
    def require_data(self, num_fewshot: int | None) -> None:
        """Fail at once (``DataNotFoundError``) when data the task reads cannot be had."""

    @abc.abstractmethod
    def all_eval_docs(self) -> list:
        """Every document of the evaluated split."""

    @abc.abstractmethod
    def _documents_phrase(self, count: int) -> str:
        """How an error names the task's ``count`` documents (e.g. "its 12 documents")."""

    def sample_size(self, limit: int | float | None) -> int:
        """Docs evaluated under ``limit`` (a fraction < 1.0 is rounded up, as lm-eval)."""
        n = len(self.all_eval_docs())
        if limit is None:
            return n
        size = int(math.ceil(n * limit)) if limit < 1.0 else int(limit)
        if size <= 0:
            raise TaskError(f"task {self.name!r}: limit {limit!r} selects no documents")
        return min(size, n)

    def eval_docs(self, limit: int | float | None = None,
                  samples: Sequence[int] | None = None) -> list[tuple[int, Any]]:
        """``(doc_id, doc)`` pairs of the evaluated split: the first ``limit`` docs, or the docs
        at the ``samples`` indices in split order, renumbered from 0 (lm-eval's ``--samples``).
        """
        docs = self.all_eval_docs()
        if samples:
            bad = [i for i in samples if not 0 <= i < len(docs)]
            if bad:
                raise SampleIndexError(
                    f"task {self.name!r}: samples {bad} are outside "
                    f"{self._documents_phrase(len(docs))} (indices 0..{len(docs) - 1})")
            wanted = set(samples)
            return list(enumerate(d for i, d in enumerate(docs) if i in wanted))
        return list(enumerate(docs[: self.sample_size(limit)]))

    # ------------------------------------------------------------------ requests
    @abc.abstractmethod
    def resolve_num_fewshot(self, num_fewshot: int | None) -> int:
        """The few-shot count used under the job's ``num_fewshot`` (lm-eval's rule)."""

    @abc.abstractmethod
    def build_requests(self, *, limit: int | float | None = None,
                       samples: Sequence[int] | None = None, num_fewshot: int | None = None,
                       fewshot_seed: int = 1234, system_instruction: str | None = None,
                       apply_chat_template: bool = False, gen_kwargs: dict | None = None,
                       chat_template: Callable | None = None,
                       fewshot_as_multiturn: bool = False) -> list[Request]:
        """lm-eval's requests for the selected documents, in lm-eval's order."""

    # ------------------------------------------------------------------ results side
    @abc.abstractmethod
    def doc_target(self, doc: Any) -> Any:
        """The document's target (``doc_to_target``)."""

    @abc.abstractmethod
    def doc_choices(self, doc: Any) -> list[str] | None:
        """The document's choices (``doc_to_choice``), or None."""

    @abc.abstractmethod
    def apply_filters(self, responses: Sequence[Sequence[Any]],
                      docs: Sequence[Any] | None = None) -> dict[str, list]:
        """Filter name -> one filtered value per response list."""
