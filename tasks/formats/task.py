"""A multiple-choice task asked as a generation task in a format (``arc_easy@generate``).

The task keeps its documents, question (``doc_to_text``), choices (``doc_to_choice``) and gold
(``doc_to_target``); the format lays them out, the model generates, and the answer read from
the response is scored by ``exact_match`` with ``unparsed`` beside it. The task's own
multiple-choice metrics (``acc``...) are replaced: they are loglikelihood metrics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from evalfleet.common.request_kind import OutputType
from evalfleet.tasks.config import default_gen_kwargs
from evalfleet.tasks.errors import config_error
from evalfleet.tasks.filters import FilterPipeline
from evalfleet.tasks.formats.answers import AnswerFilter, unparsed
from evalfleet.tasks.formats.specs import LETTERS, FormatSpec
from evalfleet.tasks.task import Doc, Task

#: the metrics of every formatted task (0.5's ``_EXACT_MATCH_METRIC``, then ``unparsed``)
METRICS = [
    {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
     "ignore_case": True, "ignore_punctuation": True},
    {"metric": unparsed, "aggregation": "mean", "higher_is_better": False},
]
#: the filter pipelines as the task's config reports them (``_parse_filters`` builds them)
FILTERS = [
    {"name": "none", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"},
                                {"function": "answer", "mode": "strict"}]},
    {"name": "flexible-extract", "filter": [{"function": "take_first"},
                                            {"function": "answer", "mode": "flexible"}]},
]


class FormattedTask(Task):
    """``base`` asked in ``fmt``; named ``<base>@<format>``."""

    def __init__(self, base: Task, fmt: FormatSpec, data_dir: Path | None,
                 metadata: dict | None) -> None:
        self.fmt = fmt
        cfg = base.cfg
        if cfg.output_type != OutputType.MULTIPLE_CHOICE:
            raise config_error(cfg.source, "output_type", f"task {base.name!r} is "
                               f"{cfg.output_type}, not multiple_choice: @{fmt.name} turns a "
                               f"multiple-choice task into a generation task; run "
                               f"{base.name!r} as it is")
        shots = {k: v for k, v in (("fewshot_delimiter", fmt.fewshot_delimiter),
                                   ("target_delimiter", fmt.target_delimiter),
                                   ("gen_prefix", fmt.gen_prefix))
                 if k not in (cfg.fewshot_config or {})}
        self._choice_spec = cfg.doc_to_choice  # the choices are the format's to show
        super().__init__(dataclasses.replace(
            cfg, task=f"{base.name}@{fmt.name}", doc_to_choice=None,
            task_alias=f"{cfg.task_alias}@{fmt.name}" if cfg.task_alias else None,
            output_type=OutputType.GENERATE_UNTIL, gen_prefix=fmt.gen_prefix,
            target_delimiter=fmt.target_delimiter, fewshot_delimiter=fmt.fewshot_delimiter,
            generation_kwargs=dict(cfg.generation_kwargs or default_gen_kwargs(
                fmt.fewshot_delimiter)),
            metric_list=[dict(m) for m in METRICS], filter_list=FILTERS, process_results=None,
            fewshot=dataclasses.replace(cfg.fewshot, **shots),
        ), data_dir, metadata)

    def _parse_filters(self) -> list[FilterPipeline]:
        options = self.answer_options
        return [FilterPipeline("none", [("remove_whitespace", {}), ("take_first", {}),
                                        (AnswerFilter, {"options": options, "mode": "strict"})]),
                FilterPipeline("flexible-extract", [
                    ("take_first", {}),
                    (AnswerFilter, {"options": options, "mode": "flexible"})])]

    # -- the task's own fields ---------------------------------------------------------------
    def _choices(self, doc: Doc) -> list[str]:
        choices = Task.doc_choices(self, doc, self._choice_spec)
        if not choices or not isinstance(choices, list):
            raise config_error(self.cfg.source, "doc_to_choice",
                               f"gave {choices!r}, not a list of choices (@{self.fmt.name})")
        if self.fmt.choice_labels == "letters" and len(choices) > len(LETTERS):
            raise config_error(self.cfg.source, "doc_to_choice", f"{len(choices)} choices; "
                               f"@{self.fmt.name} letters at most {len(LETTERS)}")
        return choices

    def _question(self, doc: Doc, spec: Any) -> str:
        """``doc_to_text`` as 0.5 splices it into its template (a template stripped)."""
        if isinstance(spec, str):
            if spec in doc:
                return str(doc[spec])
            return self._template("doc_to_text", spec.strip() if "{{" in spec else spec, doc)
        value = self._call("doc_to_text", spec, doc) if callable(spec) else spec
        if not isinstance(value, str):
            raise config_error(self.cfg.source, "doc_to_text", f"gave {value!r}, not a "
                               f"question text: @{self.fmt.name} needs one question and its "
                               "choices (this looks like a multiple-input task, whose choices "
                               "are contexts)")
        return value

    def gold_index(self, doc: Doc, spec: Any = None) -> int:
        """The index of the correct choice, from the task's own ``doc_to_target``."""
        choices = self._choices(doc)
        gold = Task.doc_target(self, doc, spec)
        if isinstance(gold, str) and gold in choices:
            gold = choices.index(gold)
        elif isinstance(gold, str) and gold.isdigit():  # a template's index, as lm-eval reads it
            gold = int(gold)
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise config_error(self.cfg.source, "doc_to_target", f"gave {gold!r}, not one "
                               f"choice of {len(choices)} (@{self.fmt.name} needs one correct "
                               "choice)")
        return gold

    def answer_options(self, doc: Doc) -> tuple[list[str], list[str]]:
        """The answers the model may give for ``doc`` (labels) and the choices' texts."""
        choices = self._choices(doc)
        return self.fmt.labels(choices), [str(c) for c in choices]

    # -- what the engine reads: the prompt, and the expected answer as the target ------------
    def doc_to_text(self, doc: Doc, spec: Any = None) -> str:
        """The formatted prompt: instruction, question, lettered choices, answer prompt."""
        question = self._question(doc, self.cfg.doc_to_text if spec is None else spec)
        return self.fmt.prompt(question, [str(c) for c in self._choices(doc)])

    def doc_target(self, doc: Doc, spec: Any = None) -> str:
        """The expected answer: the gold choice's label (e.g. ``"B"``), as 0.5's target."""
        return self.answer_options(doc)[0][self.gold_index(doc, spec)]

    doc_to_target = doc_target
