"""The SQLite store's answers: keyed by (model number, compact request key), written in groups.

A mixin of ``SqliteJobStore``: it uses the store's ``_run``/``_write`` (its thread) and
``_check_open``, and keeps the models' numbers in ``self._models``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from evalfleet.server.store.base import AnswerSlices, JobStore, StoreUnavailableError
from evalfleet.server.store.sqlite_keys import packed_request_keys, request_key
from evalfleet.server.store.sqlite_schema import transaction as _transaction


class SqliteAnswers(JobStore):
    """The answers methods of ``SqliteJobStore``."""

    _models: dict[str, int]
    _slices: dict
    _slice_writer: asyncio.Task | None

    def _model_id(self, c: sqlite3.Connection, fingerprint: str, *, create: bool) -> int | None:
        """The small integer that stands for ``fingerprint`` in the answers table."""
        found = self._models.get(fingerprint)
        if found is None:
            if create:
                c.execute("INSERT OR IGNORE INTO models (fingerprint) VALUES (?)", (fingerprint,))
            row = c.execute("SELECT id FROM models WHERE fingerprint=?", (fingerprint,)
                            ).fetchone()
            if row is None:
                return None
            found = self._models[fingerprint] = row[0]
        return found

    async def get_answers(self, fingerprint: str, request_ids: Iterable[str]
                          ) -> dict[str, bytes]:
        by_key = {request_key(rid): rid for rid in request_ids}
        keys = list(by_key)

        def select(c: sqlite3.Connection) -> dict[str, bytes]:
            model = self._model_id(c, fingerprint, create=False)
            found: dict[str, bytes] = {}
            if model is None:
                return found
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                found.update((by_key[key], answer) for key, answer in c.execute(
                    f"SELECT request, answer FROM answers WHERE model=? "
                    f"AND request IN ({','.join('?' * len(chunk))})", (model, *chunk)))
            return found

        return await self._run(select) if keys else {}

    async def put_answers(self, fingerprint: str, answers: Iterable[tuple[str, bytes]]
                          ) -> int:
        # Keys are made here: on the store's thread they would cost more, the thread taking
        # the GIL back from the event loop for them (measured with bench/bench_fleet.py).
        rows = [(request_key(rid), blob) for rid, blob in answers]

        def insert(c: sqlite3.Connection) -> int:
            # The model's row is committed first (autocommit), so a number cached here always
            # names a row every process sees.
            model = self._model_id(c, fingerprint, create=True)

            def write(c: sqlite3.Connection) -> int:
                before = c.total_changes
                c.executemany(f"INSERT OR IGNORE INTO answers VALUES ({model},?,?)", rows)
                return c.total_changes - before

            return _transaction(c, write)

        return await self._write(insert) if rows else 0

    async def put_answer_slices(self, fingerprint: str, answers: AnswerSlices) -> None:
        # Batches that return while a write runs are written together by the next one (group
        # commit), each write one INSERT ... SELECT that cuts every row from three buffers:
        # SQLite works through it without the GIL, where executemany takes the GIL back from
        # the event loop for every row it binds (measured with bench/bench_fleet.py).
        packed = packed_request_keys(answers.ids)
        lengths = answers.ends - answers.starts
        if packed is None or int(lengths.max(initial=0)) >= _SLICE_LENGTH_LIMIT:
            return await super().put_answer_slices(fingerprint, answers)
        self._check_open()
        keys, width = packed
        written = asyncio.get_running_loop().create_future()
        self._slices.setdefault((fingerprint, width), []).append(
            PendingSlices(keys, answers.raw, answers.starts, lengths, written))
        if self._slice_writer is None or self._slice_writer.done():
            self._slice_writer = asyncio.create_task(self._write_slices())
        await written

    async def _write_slices(self) -> None:
        """Write the waiting batches of answers, a statement per model, until none waits."""
        while self._slices:
            groups, self._slices = self._slices, {}
            for (fingerprint, width), parts in groups.items():
                bases = np.cumsum([0, *(len(p.raw) for p in parts[:-1])])
                values = np.concatenate([(p.starts + base) * _SLICE_LENGTH_LIMIT + p.lengths
                                         for p, base in zip(parts, bases.tolist(), strict=True)])
                args = (b"".join(p.keys for p in parts), b"".join(p.raw for p in parts),
                        json.dumps(values.tolist()))

                def insert(c: sqlite3.Connection, fingerprint=fingerprint, width=width,
                           args=args) -> None:
                    model = self._model_id(c, fingerprint, create=True)
                    # One statement in autocommit mode: a transaction of its own.
                    c.execute(_SLICED_INSERT.format(model=model, width=width), args)

                try:
                    await self._write(insert)
                except Exception as exc:  # noqa: BLE001 - its writers get it
                    _settle(parts, exc)
                except BaseException:  # cancelled: no writer may wait for ever
                    for waiting in [*groups.values(), *self._slices.values()]:
                        _settle(waiting, StoreUnavailableError(
                            f"store {self.address}: answer write interrupted"))
                    self._slices = {}
                    raise
                else:
                    _settle(parts, None)

    async def count_answers(self, fingerprint: str) -> int:
        def count(c: sqlite3.Connection) -> int:
            model = self._model_id(c, fingerprint, create=False)
            return 0 if model is None else c.execute(
                "SELECT COUNT(*) FROM answers WHERE model=?", (model,)).fetchone()[0]

        return await self._run(count)

    async def has_answers(self, fingerprint: str) -> bool:
        def exists(c: sqlite3.Connection) -> bool:
            model = self._model_id(c, fingerprint, create=False)
            return model is not None and c.execute(
                "SELECT 1 FROM answers WHERE model=? LIMIT 1", (model,)).fetchone() is not None

        return await self._run(exists)


@dataclass
class PendingSlices:
    """A batch of answers waiting for a grouped write (``put_answer_slices``)."""

    keys: bytes  # packed request keys
    raw: bytes
    starts: np.ndarray
    lengths: np.ndarray
    written: asyncio.Future


def _settle(parts: list[PendingSlices], error: BaseException | None) -> None:
    """Tell the writers of ``parts`` how their write ended."""
    for part in parts:
        if not part.written.done():
            if error is None:
                part.written.set_result(None)
            else:
                part.written.set_exception(error)


#: Request keys per look-up statement (SQLite allows 32,766 parameters).
_LOOKUP_CHUNK = 8192
#: ``put_answer_slices`` packs each answer's offset and length in one integer, the length
#: below this bound (longer answers take the row-by-row path).
_SLICE_LENGTH_LIMIT = 1 << 24
#: Row ``key`` of the JSON array ``?3`` (offset * limit + length, per answer) is the answer
#: ``substr(?2, offset + 1, length)`` to the request whose key is the ``key``-th ``width``
#: bytes of ``?1``.
_SLICED_INSERT = (
    "INSERT OR IGNORE INTO answers SELECT {model}, substr(?1, key * {width} + 1, {width}), "
    f"substr(?2, value / {_SLICE_LENGTH_LIMIT} + 1, value % {_SLICE_LENGTH_LIMIT}) "
    "FROM json_each(?3)")


