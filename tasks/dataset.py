"""Load a task's dataset splits: the local mirror first, then ``datasets.load_dataset``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

from evalfleet.tasks.config import TaskConfig
from evalfleet.tasks.errors import DataNotFoundError

log = structlog.get_logger(__name__)

DATA_DIR_ENV = "EVALFLEET_DATA_DIR"
_SUFFIXES = (".jsonl", ".jsonl.gz")


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
                searched = [self.folder / f"{name}{s}" for s in _SUFFIXES]
                raise DataNotFoundError(
                    f"{cfg.source}: key '{_split_key(cfg, name)}' split {name!r} of task "
                    f"{cfg.task!r} not found; searched {searched[0]}[.gz]",
                    searched,
                )
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
                f" and datasets.load_dataset failed: {msg}",
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
