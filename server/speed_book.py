"""How fast workers answer: seconds per request learned from answered batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalfleet.server.worker_record import Worker

if TYPE_CHECKING:
    from evalfleet.server.job_dispatch import JobDispatch


class SpeedBook:
    """Seconds per request, learned from answered batches: per (worker, job, kind), falling
    back to (worker, kind), then to (model, kind) over every worker of the model."""

    def __init__(self) -> None:
        self._spi: dict[tuple, float] = {}
        self._last_size: dict[tuple, int] = {}

    def seconds_per_item(self, worker: Worker, job: JobDispatch, kind: str) -> float | None:
        for key in ((worker.address, job.job_id, kind), (worker.address, kind),
                    (job.model_key, kind)):
            if key in self._spi:
                return self._spi[key]
        return None

    def last_size(self, worker: Worker, job: JobDispatch, kind: str) -> int | None:
        return self._last_size.get((worker.address, job.job_id, kind))

    def record(self, worker: Worker, job: JobDispatch, kind: str, items: int,
               seconds: float) -> None:
        spi = max(seconds, 1e-6) / max(items, 1)
        self._last_size[(worker.address, job.job_id, kind)] = items
        for key in ((worker.address, job.job_id, kind), (worker.address, kind),
                    (job.model_key, kind)):
            old = self._spi.get(key)
            self._spi[key] = spi if old is None else 0.5 * old + 0.5 * spi

    def forget_job(self, job_id: str) -> None:
        for book in (self._spi, self._last_size):
            for key in [k for k in book if len(k) == 3 and k[1] == job_id]:
                del book[key]
