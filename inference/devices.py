"""lm-eval's rule for the ``--device`` of a locally loaded model."""

from __future__ import annotations


def resolve_device(device: str) -> tuple[str, str | None]:
    """(the device to load on, a note when it is not the one asked for).

    lm-eval's HFLM rule: a device this machine has (``cuda``, ``cpu``, ``cuda:N`` for an
    existing GPU N, ``mps``) is used; any other falls back to ``cuda`` when a GPU is available,
    else ``cpu``."""
    if device == "cpu":
        return device, None
    import torch

    gpus = torch.cuda.device_count()
    known = {"cuda", "cpu", "mps", "mps:0", *(f"{kind}:{i}" for i in range(gpus)
                                             for kind in ("cuda", "npu", "xpu", "hpu"))}
    if device in known:
        return device, None
    fallback = "cuda" if torch.cuda.is_available() else "cpu"
    return fallback, (f"--device {device} is not available here; using {fallback} "
                      "(as lm-eval does)")
