"""The cyclic garbage collector around a process's start-up and exit.

Importing torch and transformers and loading a model makes ~400,000 objects that live as long
as the process. Python's collector walks all of them at every oldest-generation pass: seven
passes during a SmolLM2-135M load, 1.5–2.3 s of its 9.5 s on a 2-core CPU, and once more at
interpreter exit (about 2 s after a model has run). The commands that load a model
(``evalfleet eval``, ``evalfleet serve``) therefore defer collection until their services are
up, then freeze what start-up built (``gc.freeze``: later passes skip it) and collect as usual.

What start-up leaves as cyclic garbage is frozen with it unless ``collect`` is asked for: about
11,500 small objects, 8 MB, no tensors (measured after the SmolLM2 load), kept for the life of
a one-job process instead of paying 0.6 s to collect them. A long-running service collects them.
"""

from __future__ import annotations

import gc

_deferred = False


def defer_collection() -> None:
    """Turn automatic collection off until ``end_startup``. Only a process's entry point
    calls it; a library caller (``main`` in tests) never has its collector changed."""
    global _deferred
    if gc.isenabled():
        gc.disable()
        _deferred = True


def end_startup(*, collect: bool = False) -> None:
    """Start-up is over: freeze what it built and turn collection back on. A no-op unless
    ``defer_collection`` turned it off; ``collect`` first frees start-up's cyclic garbage."""
    global _deferred
    if not _deferred:
        return
    _deferred = False
    if collect:
        gc.collect()
    gc.freeze()
    gc.enable()


def skip_exit_collection() -> None:
    """Freeze every object so the interpreter's last collection does not walk them: they are
    still freed, and ``atexit`` handlers still run."""
    gc.freeze()
