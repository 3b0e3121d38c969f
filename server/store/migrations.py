"""The schema migrations a store still has to run, shared by every implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from evalfleet.server.store.base import StoreSchemaError

S = TypeVar("S")


def pending_migrations(migrations: Sequence[tuple[int, Sequence[S]]], current: int,
                       address: str) -> list[tuple[int, Sequence[S]]]:
    """The ``(version, statements)`` of ``migrations`` newer than ``current``, in order.

    ``StoreSchemaError`` when ``current`` is newer than the last one (a store written by a newer
    evalfleet). Each store runs the statements of each version and records the version, all in
    one transaction.
    """
    latest = migrations[-1][0]
    if current > latest:
        raise StoreSchemaError(
            f"store {address} has schema version {current}, newer than this evalfleet's "
            f"({latest}); upgrade evalfleet")
    return [(version, statements) for version, statements in migrations if version > current]
