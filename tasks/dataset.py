"""Load a task's dataset splits: the local mirror first, then ``datasets.load_dataset``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from evalfleet.tasks.config import TaskConfig
from evalfleet.tasks.errors import DataNotFoundError

log = structlog.get_logger(__name__)

DATA_DIR_ENV = "EVALFLEET_DATA_DIR"
_SUFFIXES = (".jsonl", ".jsonl.gz")
#: How to point evalfleet at a mirror, said by every error about data it cannot find.
POINT_AT_MIRROR = ("point --data_dir (or EVALFLEET_DATA_DIR) at a mirror laid out as "
                   "<org>/<name>/<config or default>/<split>.jsonl")
#: Seconds a hub reachability answer is reused (a long-running coordinator asks again later).
_HUB_CHECK_TTL_S = 60.0
_HUB_CONNECT_TIMEOUT_S = 3.0
_hub_checked: tuple[float, str | None] | None = None


def default_data_dir() -> Path | None:
    """The mirror root from ``$EVALFLEET_DATA_DIR`` (None when unset)."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def mirror_folder(data_dir: Path | None, path: str | None, name: str | None) -> Path | None:
    """``<data_dir>/<dataset_path>/<dataset_name or default>`` (None without a mirror root)."""
    if data_dir is None or not path:
        return None
    return Path(data_dir) / path / (name or "default")


def mirror_split_file(folder: Path, split: str) -> Path | None:
    """The JSONL file for one split in a mirror folder, if present."""
    for suffix in _SUFFIXES:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def splits_read(cfg: Mapping[str, Any], num_fewshot: int) -> list[tuple[str, str]]:
    """The ``(key, split)`` pairs a task reads, in a task config's own keys: its evaluated
    split, and with ``num_fewshot > 0`` the split few-shot examples are drawn from (lm-eval's
    order: ``fewshot_config.split``/``fewshot_split``, else ``training_split``, else
    ``validation_split``; none when the examples are given inline)."""
    out: list[tuple[str, str]] = []
    for key in ("test_split", "validation_split"):
        if cfg.get(key):
            out.append((key, str(cfg[key])))
            break
    if num_fewshot > 0:
        fewshot = cfg.get("fewshot_config") or {}
        split = fewshot.get("split") or cfg.get("fewshot_split")
        if split:
            out.append(("fewshot_split", str(split)))
        elif fewshot.get("samples") is None:
            for key in ("training_split", "validation_split"):
                if cfg.get(key):
                    out.append((key, str(cfg[key])))
                    break
    return list(dict.fromkeys(out))


def configured_splits(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``splits_read`` with the config's own ``num_fewshot`` (what a listing shows)."""
    shots = cfg.get("num_fewshot")
    return splits_read(cfg, shots if isinstance(shots, int) else 0)


def missing_splits(folder: Path | None, splits: list[tuple[str, str]]) -> list[str]:
    """The splits a mirror folder lacks (every one when the folder is absent)."""
    if folder is None or not folder.is_dir():
        return [split for _, split in splits]
    return [split for _, split in splits if mirror_split_file(folder, split) is None]


def _held_splits(folder: Path) -> str:
    names = sorted({f.name.split(".", 1)[0] for f in folder.iterdir()
                    if f.name.endswith(_SUFFIXES)})
    return ", ".join(names) or "nothing"


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot serve a dataset now, or None when it may.

    Offline by setting (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), or a first connection to
    the hub's endpoint refused or timed out: ``datasets`` would otherwise retry for most of a
    minute before failing. Remembered for a minute."""
    global _hub_checked
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name} is set"
    now = time.monotonic()
    if _hub_checked is not None and now - _hub_checked[0] < _HUB_CHECK_TTL_S:
        return _hub_checked[1]
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    parts = urlsplit(endpoint)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    reason = None
    try:
        with socket.create_connection((parts.hostname or "", port),
                                      timeout=_HUB_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = f"{endpoint} cannot be reached: {exc.strerror or exc}"
    _hub_checked = (now, reason)
    return reason


def _load_json_split(file: Path, split: str) -> Any:
    import datasets

    return datasets.load_dataset("json", data_files={split: str(file)}, split=split)


class DatasetSource:
    """Lazily loads (and caches) the splits a task uses."""

    def __init__(self, cfg: TaskConfig, data_dir: Path | None, metadata: dict | None = None):
        self.cfg = cfg
        self.data_dir = data_dir
        self.metadata = metadata or {}
        self._splits: dict[str, Any] = {}
        self._whole: Any = None

    @property
    def folder(self) -> Path | None:
        """The mirror folder for this dataset (may not exist)."""
        return mirror_folder(self.data_dir, self.cfg.dataset_path, self.cfg.dataset_name)

    def in_mirror(self) -> bool:
        """Whether the mirror holds a folder for this dataset."""
        folder = self.folder
        return folder is not None and folder.is_dir()

    def _from_hub(self) -> bool:
        """Whether data not in the mirror would come from the hub (not a local builder, data
        files or folder, nor a ``custom_dataset``)."""
        cfg = self.cfg
        return (cfg.custom_dataset is None and bool(cfg.dataset_path)
                and "data_files" not in (cfg.dataset_kwargs or {})
                and not Path(str(cfg.dataset_path)).exists())

    def require(self, splits: list[tuple[str, str]]) -> None:
        """Fail at once (``DataNotFoundError``, one line saying what to do) when ``splits``
        cannot be read: the mirror folder lacks one, or the dataset is not in the mirror and
        the hub cannot be reached. Reads nothing."""
        if self.in_mirror():
            assert self.folder is not None
            for key, split in splits:
                if mirror_split_file(self.folder, split) is None:
                    raise self._missing_split(key, split)
        elif self._from_hub():
            reason = hub_unreachable()
            if reason is not None:
                raise self._not_in_mirror(reason)

    def _missing_split(self, key: str, split: str) -> DataNotFoundError:
        assert self.folder is not None
        searched = [self.folder / f"{split}{s}" for s in _SUFFIXES]
        return DataNotFoundError(
            f"{self.cfg.source}: key '{key}' split {split!r} of task {self.cfg.task!r} not "
            f"found; searched {searched[0]}[.gz] (that folder holds: "
            f"{_held_splits(self.folder)}); add the split there, or {POINT_AT_MIRROR} that "
            "has it", searched)

    def _not_in_mirror(self, reason: str) -> DataNotFoundError:
        cfg = self.cfg
        dataset = "/".join(x for x in (cfg.dataset_path, cfg.dataset_name) if x)
        if self.data_dir is None:
            where = "no data folder is set (--data_dir, EVALFLEET_DATA_DIR)"
        else:
            where = f"it is not in the data folder {self.data_dir} (looked in {self.folder})"
        return DataNotFoundError(
            f"task {cfg.task!r} ({cfg.source}) reads dataset {dataset}: {where}, and the "
            "Hugging Face hub "
            f"cannot serve it ({reason}); {POINT_AT_MIRROR}",
            [str(self.folder)] if self.folder else [])

    def split(self, name: str) -> Any:
        """The raw split (a ``datasets.Dataset`` or a list of dicts)."""
        if name not in self._splits:
            self._splits[name] = self._load_split(name)
        return self._splits[name]

    def _load_split(self, name: str) -> Any:
        cfg = self.cfg
        if cfg.custom_dataset is None and self.in_mirror():
            assert self.folder is not None
            file = mirror_split_file(self.folder, name)
            if file is None:
                raise self._missing_split(_split_key(cfg, name), name)
            log.debug("loading split from mirror", task=cfg.task, file=str(file))
            return _load_json_split(file, name)
        whole = self._load_whole()
        if name not in whole:
            where = self._describe_remote()
            searched = [str(self.folder)] if self.folder else []
            raise DataNotFoundError(
                f"{cfg.source}: key '{_split_key(cfg, name)}' split {name!r} of task {cfg.task!r} "
                f"not found in {where} (available: {', '.join(map(str, whole)) or 'none'})",
                searched + [where],
            )
        return whole[name]

    def _describe_remote(self) -> str:
        kwargs = self.cfg.dataset_kwargs or {}
        if "data_files" in kwargs:
            return f"data_files {kwargs['data_files']}"
        return f"dataset {self.cfg.dataset_path!r} (name {self.cfg.dataset_name!r})"

    def _load_whole(self) -> Any:
        if self._whole is not None:
            return self._whole
        cfg = self.cfg
        kwargs = dict(cfg.dataset_kwargs or {})
        kwargs.pop("trust_remote_code", None)
        if cfg.custom_dataset is not None:
            self._whole = cfg.custom_dataset(**{**(cfg.metadata or {}), **self.metadata}, **kwargs)
            return self._whole
        reason = hub_unreachable() if self._from_hub() else None
        if reason is not None:  # fail now, not after datasets' retries (most of a minute)
            raise self._not_in_mirror(reason)
        import datasets

        if "data_files" in kwargs:
            kwargs["data_files"] = _resolve_data_files(kwargs["data_files"], cfg.source)
        searched = [str(self.folder)] if self.folder else []
        try:
            self._whole = datasets.load_dataset(
                path=cfg.dataset_path, name=cfg.dataset_name, **kwargs
            )
        except Exception as err:  # noqa: BLE001 - datasets raises many kinds
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataNotFoundError(
                f"{cfg.source}: key 'dataset_path' cannot load {self._describe_remote()} for "
                f"task {cfg.task!r}: not in the mirror ({searched[0] if searched else 'no mirror'})"
                f" and datasets.load_dataset failed: {msg}; {POINT_AT_MIRROR}",
                searched + [self._describe_remote()],
            ) from None
        return self._whole


def _split_key(cfg: TaskConfig, name: str) -> str:
    for key in ("test_split", "validation_split", "training_split", "fewshot_split"):
        if getattr(cfg, key) == name:
            return key
    return "fewshot_config.split"


def _resolve_data_files(data_files: Any, source: Path | None) -> Any:
    """Relative data_files are tried next to the YAML file first, then as given."""
    if source is None:
        return data_files

    def fix(p: Any) -> Any:
        if isinstance(p, str) and not os.path.isabs(p) and "://" not in p:
            candidate = source.parent / p
            if candidate.exists():
                return str(candidate)
        return p

    if isinstance(data_files, dict):
        return {k: [fix(x) for x in v] if isinstance(v, list) else fix(v)
                for k, v in data_files.items()}  # fmt: skip
    if isinstance(data_files, list):
        return [fix(x) for x in data_files]
    return fix(data_files)
