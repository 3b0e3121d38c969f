"""The seam every inference-worker backend implements, and the values it exchanges.

Workers return token log-probabilities and generations; they never compute metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.logging import get_logger

log = get_logger("backend")

DEFAULT_MAX_GEN_TOKS = 256
# lm-eval's normalize_gen_kwargs: token-limit aliases, highest priority first.
_MAX_TOKEN_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


class BackendArgumentError(InvalidArgumentError):
    """A malformed, mistyped or unsupported backend argument; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"model_args.{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ModelInfo:
    """What a worker serves; ``fingerprint`` is a sha256 over weights + tokenizer files."""

    backend: str
    model_name: str
    revision: str
    tokenizer: str
    max_length: int
    fingerprint: str
    dtype: str
    device: str
    num_parameters: int
    eot_token_id: int
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None


@dataclass(frozen=True)
class TokenScores:
    """Per scored token: its log-probability and whether it was the argmax."""

    logprobs: np.ndarray  # float32, one per scored token
    greedy: np.ndarray  # bool, one per scored token

    @property
    def total(self) -> float:
        """Sum of the log-probabilities (lm-eval's loglikelihood value)."""
        return float(self.logprobs.astype(np.float64).sum())

    @property
    def is_greedy(self) -> bool:
        """True when every scored token was the argmax (lm-eval's is_greedy)."""
        return bool(self.greedy.all())


@dataclass(frozen=True)
class GenerationParams:
    """Normalised generation settings of one ``generate_until`` request."""

    until: list[str] = field(default_factory=list)
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    temperature: float = 0.0
    do_sample: bool = False
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def key(self) -> tuple:
        """A hashable key: requests with equal keys may share a generation batch."""
        return (tuple(self.until), self.max_gen_toks, self.temperature, self.do_sample,
                self.top_p, self.top_k, self.seed)

    @classmethod
    def from_gen_kwargs(cls, gen_kwargs: Mapping[str, Any] | None,
                        default_max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> GenerationParams:
        """Apply lm-eval's ``normalize_gen_kwargs`` rules to a task's generation_kwargs."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
            until = list(until)
        else:
            raise BackendArgumentError("gen_kwargs.until",
                                       f"expected str or list[str], got {until!r}")
        limits = [(k, kwargs.pop(k)) for k in _MAX_TOKEN_ALIASES if kwargs.get(k) is not None]
        for k in _MAX_TOKEN_ALIASES:
            kwargs.pop(k, None)
        max_gen_toks = _as_int(f"gen_kwargs.{limits[0][0]}", limits[0][1]) if limits \
            else default_max_gen_toks
        temperature = _as_float("gen_kwargs.temperature", kwargs.pop("temperature", 0.0) or 0.0)
        do_sample = kwargs.pop("do_sample", None)
        if do_sample is None:
            do_sample = temperature > 0.0
        elif not isinstance(do_sample, bool):
            raise BackendArgumentError("gen_kwargs.do_sample",
                                       f"expected a bool, got {do_sample!r}")
        if not do_sample:
            temperature = 0.0
        top_p = kwargs.pop("top_p", None)
        top_k = kwargs.pop("top_k", None)
        seed = kwargs.pop("seed", None)
        kwargs.pop("max_length", None)  # lm-eval honours it with a warning; we use max_gen_toks
        if kwargs:
            log.warning("gen_kwargs_ignored", keys=sorted(kwargs))
        return cls(
            until=until, max_gen_toks=max_gen_toks, temperature=temperature,
            do_sample=do_sample,
            top_p=None if top_p is None else _as_float("gen_kwargs.top_p", top_p),
            top_k=None if top_k is None else _as_int("gen_kwargs.top_k", top_k),
            seed=None if seed is None else _as_int("gen_kwargs.seed", seed),
        )


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise BackendArgumentError(name, f"expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BackendArgumentError(name, f"expected an integer, got {value!r}") from None


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BackendArgumentError(name, f"expected a number, got {value!r}") from None


class Backend(ABC):
    """A loaded model that scores and generates text for an inference worker.

    Implementations must return results in input order and count in ``positions_computed``
    every model input position they compute (batch x padded length of every forward).
    """

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    positions_computed: int = 0

    @classmethod
    @abstractmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = 1) -> Backend:
        """Load from lm-eval style model_args; raise BackendArgumentError on bad args."""

    @abstractmethod
    def model_info(self) -> ModelInfo:
        """Describe the loaded model."""

    @abstractmethod
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[TokenScores]:
        """Scores of each continuation's tokens given its context."""

    @abstractmethod
    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[TokenScores]:
        """Scores of every token of each text, over lm-eval's rolling windows."""

    @abstractmethod
    def generate_until(self, requests: Sequence[tuple[str, GenerationParams]]) -> list[str]:
        """Generated continuations, cut at the first stop sequence."""
