"""Shared Numba decorator settings for every scoring kernel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from numba import njit

#: Kernels compile once and reuse the on-disk cache in later processes.
#: ``error_model="numpy"`` makes float division by zero give inf/nan like NumPy.
jit = njit(cache=True, nogil=True, error_model="numpy")
pjit = njit(cache=True, nogil=True, parallel=True, error_model="numpy")

_PARALLEL_LOCK = threading.Lock()


def launch(kernel: Callable[..., Any], *args: Any) -> Any:
    """Run a parallel kernel under a process-wide lock.

    Numba's ``workqueue`` threading layer (the fallback when neither TBB nor OpenMP is usable)
    aborts the process when two Python threads launch parallel kernels at once; gRPC servers
    call from thread pools, so launches are serialised (each one already uses every core).
    """
    with _PARALLEL_LOCK:
        return kernel(*args)
