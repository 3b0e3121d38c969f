"""Where evalfleet keeps things on the local machine."""

from __future__ import annotations

import os
from pathlib import Path

#: The embedded coordinator's store, in the cache folder.
STORE_FILE = "store.db"


def cache_dir() -> Path:
    """``$EVALFLEET_CACHE_DIR``, else ``$XDG_CACHE_HOME/evalfleet``, else ``~/.cache/evalfleet``:
    model fingerprints, the embedded coordinator's store and compiled scoring kernels."""
    if env := os.environ.get("EVALFLEET_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "evalfleet"


def default_store_path() -> Path:
    """The store ``evalfleet eval`` uses without ``--coordinator`` or ``--store``."""
    return cache_dir() / STORE_FILE
