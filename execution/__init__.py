"""evalfleet.execution: run model-generated code safely (pass@k for humaneval, mbpp).

Each program runs in its own subprocess, in a throwaway directory, under rlimits and a
wall-clock timeout, in bubblewrap (only the interpreter's folders visible, no network) where the
machine allows it (see ``isolation``); many run in parallel across cores, always off the
coordinator's event loop. Nothing runs unless both the coordinator's operator and the job
confirmed it, and under a sandbox weaker than bubblewrap only if the operator accepted that
(``policy``).
"""

from evalfleet.execution.code_eval import (
    CODE_METRICS,
    CodeEvalMetric,
    check_programs,
    pass_at_1,
    pass_at_k,
    pass_at_k_values,
)
from evalfleet.execution.isolation import Isolation, detect
from evalfleet.execution.policy import (
    UnsafeCodeError,
    WeakSandboxError,
    allow_code_execution,
    check_sandbox,
    check_unsafe_code,
    require_allowed,
)
from evalfleet.execution.sandbox import ExecutionResult, Limits, run_program, run_programs

__all__ = [
    "CODE_METRICS",
    "CodeEvalMetric",
    "ExecutionResult",
    "Isolation",
    "Limits",
    "UnsafeCodeError",
    "WeakSandboxError",
    "allow_code_execution",
    "check_programs",
    "check_sandbox",
    "check_unsafe_code",
    "detect",
    "pass_at_1",
    "pass_at_k",
    "pass_at_k_values",
    "require_allowed",
    "run_program",
    "run_programs",
]
