"""Where Numba keeps the compiled scoring kernels: a writable per-user cache directory.

Numba's default is a ``__pycache__`` beside the sources, which an installed (read-only) copy
cannot write; it would then recompile every kernel in every process. ``use_writable_cache``
must run before the first kernel is defined (Numba reads ``NUMBA_CACHE_DIR`` when it is
imported and picks each kernel's cache directory when the kernel is decorated).
"""

from __future__ import annotations

import os
import sys

from evalfleet.common.paths import cache_dir


def kernel_cache_dir() -> str:
    """``$NUMBA_CACHE_DIR`` when the user set it, else ``<evalfleet cache dir>/numba``."""
    return os.environ.get("NUMBA_CACHE_DIR") or str(cache_dir() / "numba")


def use_writable_cache() -> str:
    """Point Numba at :func:`kernel_cache_dir` (for this process and its children)."""
    path = kernel_cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = path
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba was imported before us: its config has read the old value
        config.CACHE_DIR = path
    return path
