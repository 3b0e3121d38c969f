"""pass@k of generated programs, with HF code_eval's semantics (which lm-eval 0.4.13's humaneval
and mbpp use): each candidate runs as ``candidate + "\\n" + test`` and passes when it runs to its
end; per problem pass@k is the unbiased estimator over its ``n`` candidates, for each ``k <= n``.

The metric objects below are what ``metric: !function utils.pass_at_k`` resolves to in
evalfleet's built-in humaneval/mbpp (and ``metric: pass_at_k`` by name). Called like lm-eval's
per-document metric functions they work one document at a time; the evaluator calls ``batch``
once per task so that every program of every document runs in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evalfleet.execution.policy import require_allowed
from evalfleet.execution.sandbox import DEFAULT_LIMITS, ExecutionResult, Limits, run_programs
from evalfleet.scoring.passk import pass_at_k as estimate_pass_at_k


def _candidates(prediction: Any) -> list[str]:
    if isinstance(prediction, str):
        return [prediction]
    return [str(p) for p in prediction]


def check_programs(references: Sequence[str], predictions: Sequence[Any], *,
                   limits: Limits = DEFAULT_LIMITS, workers: int | None = None
                   ) -> list[list[ExecutionResult]]:
    """Run every candidate of every problem against its test; results per problem."""
    require_allowed()
    programs, owners = [], []
    for i, (test, prediction) in enumerate(zip(references, predictions, strict=True)):
        for candidate in _candidates(prediction):
            programs.append(candidate + "\n" + test)
            owners.append(i)
    results = run_programs(programs, limits, workers)
    per_problem: list[list[ExecutionResult]] = [[] for _ in references]
    for owner, result in zip(owners, results, strict=True):
        per_problem[owner].append(result)
    return per_problem


def pass_at_k_values(results: Sequence[Sequence[ExecutionResult]], ks: Sequence[int]
                     ) -> list[dict[str, float]]:
    """Per problem ``{"pass@k": value}`` for each k not above its number of candidates."""
    n = np.array([len(r) for r in results], dtype=np.int64)
    c = np.array([sum(x.passed for x in r) for r in results], dtype=np.int64)
    out: list[dict[str, float]] = [{} for _ in results]
    for k in ks:
        values = estimate_pass_at_k(n, c, int(k)) if len(n) else np.zeros(0)
        for i, value in enumerate(values):
            if n[i] >= k:
                out[i][f"pass@{k}"] = float(value)
    return out


class CodeEvalMetric:
    """A code-execution metric callable as lm-eval's ``utils.pass_at_k`` / ``utils.pass_at_1``."""

    runs_code = True

    def __init__(self, name: str, *, fixed_k: int | None = None) -> None:
        self.__name__ = name
        self.fixed_k = fixed_k  # pass_at_1: a plain float for k=1

    def _ks(self, k: Any) -> list[int]:
        if self.fixed_k is not None:
            return [self.fixed_k]
        if k is None:
            raise ValueError(f"{self.__name__}: give k (e.g. k: [1]) in the metric_list entry")
        return [k] if isinstance(k, int) else [int(x) for x in k]

    def batch(self, references: Sequence[str], predictions: Sequence[Any], k: Any = None,
              limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> list[Any]:
        """One value per document (a ``{"pass@k": v}`` dict, or a float for pass_at_1)."""
        ks = self._ks(k)
        values = pass_at_k_values(check_programs(references, predictions, limits=limits,
                                                 workers=workers), ks)
        if self.fixed_k is not None:
            return [v[f"pass@{self.fixed_k}"] for v in values]
        return values

    def __call__(self, references: Sequence[str], predictions: Sequence[Any],
                 k: Any = None) -> Any:
        """lm-eval's call for one document: ``references=[test], predictions=[result]``."""
        return self.batch([references[0]], [predictions[0]], k)[0]

    def __repr__(self) -> str:
        return f"<code metric {self.__name__}>"


pass_at_k = CodeEvalMetric("pass_at_k")
pass_at_1 = CodeEvalMetric("pass_at_1", fixed_k=1)
CODE_METRICS = {"pass_at_k": pass_at_k, "pass_at_1": pass_at_1}
