"""How likely the paired tests of :mod:`.stats` are to detect a given drop, and how many documents
they need to detect it with a given probability (their power).

``delta`` is the drop to detect (> 0, the policy's max_regression), ``alpha`` the two-sided
significance level, ``target`` the power wanted:

- **McNemar exact** (0/1 metrics, paired): the exact power of the exact test
  (:func:`mcnemar_exact_power`), with ``psi`` the share of discordant documents; the documents
  needed start from Connor's (1987) ⌈(z₁₋α/₂ √ψ + z_power √(ψ − δ²))² / δ²⌉. A drop of δ needs
  at least δ of the documents to change, so ψ is taken as at least δ (two identical runs do not
  prove that a test has power).
- **paired t-test**: the noncentral t distribution with noncentrality δ√n / sd(d).
- **z-test on stderrs** (unpaired): the standard error of the difference shrinks as 1/√n, so
  power = Φ(δ/se − z) + Φ(−δ/se − z) and the documents needed scale n by (se (z + z_power) / δ)².
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

#: The most documents a calculation answers with (beyond it: "more than this").
MAX_DOCUMENTS = 10**9
#: Up to how many documents McNemar's power is computed exactly (beyond: Connor's formula).
EXACT_UP_TO = 200_000


@dataclass(frozen=True)
class Power:
    """The power a test had and the documents (per run) it needs for the target power."""

    power: float
    documents_needed: int


def _z(p: float) -> float:
    return float(special.ndtri(p))


def _documents(value: float) -> int:
    return int(min(MAX_DOCUMENTS, max(2, math.ceil(value - 1e-9))))


def mcnemar_exact_power(n: int, psi: float, delta: float, alpha: float) -> float:
    """Power of :func:`.stats.mcnemar_exact` at level ``alpha`` on ``n`` documents of which a
    share ``psi`` is discordant, ``delta`` more of them drops than gains: the discordant count
    k is binomial (n, psi); given k, the drops are binomial (k, q), q = (psi + delta) / 2 psi,
    and the test rejects when the smaller side is at most the largest c with
    2·P(Bin(k, ½) ≤ c) < alpha."""
    k = np.arange(n + 1)
    guess = np.floor(np.nan_to_num(special.bdtrik(alpha / 2, k, 0.5), nan=-1.0)).astype(int)
    c = np.full_like(k, -1)  # -1: no split of k discordant documents is significant
    for candidate in (guess - 1, guess, guess + 1):
        significant = (candidate >= 0) & (2 * candidate < k) & (
            2 * special.bdtr(np.maximum(candidate, 0), k, 0.5) < alpha)
        c = np.where(significant, np.maximum(c, candidate), c)
    q = min(1.0, (psi + delta) / (2 * psi))
    at = np.maximum(c, 0)
    tail = special.bdtrc(np.maximum(k - at - 1, 0), k, q)
    reject = np.where(c >= 0, special.bdtr(at, k, q) + tail, 0.0)
    if psi >= 1.0:
        return float(reject[-1])
    weights = np.exp(special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
                     + k * math.log(psi) + (n - k) * math.log1p(-psi))
    return float(min(1.0, np.sum(weights * reject)))


def mcnemar_power(a: Sequence[float], b: Sequence[float], delta: float, alpha: float,
                  target: float) -> Power:
    """Power of McNemar's exact test on paired 0/1 outcomes ``a``, ``b`` to detect a drop
    ``delta``, and the documents it needs for ``target`` (from Connor's approximation, then
    the exact power, searched up to :data:`EXACT_UP_TO` documents)."""
    va, vb = np.asarray(a), np.asarray(b)
    psi = max(float(np.mean(va != vb)) if len(va) else 0.0, delta)
    spread = math.sqrt(max(psi - delta * delta, 0.0))
    z_a, z_b = _z(1 - alpha / 2), _z(target)
    needed = _documents((z_a * math.sqrt(psi) + z_b * spread) ** 2 / delta ** 2)
    if needed <= EXACT_UP_TO:
        while needed < EXACT_UP_TO and mcnemar_exact_power(needed, psi, delta, alpha) < target:
            needed += max(1, needed // 100)  # the exact test is a little conservative
    return Power(mcnemar_exact_power(len(va), psi, delta, alpha), needed)


def _t_power(n: int, sd: float, delta: float, alpha: float) -> float:
    if n < 2:
        return 0.0
    if sd == 0.0:
        return 1.0
    df = n - 1
    critical = float(special.stdtrit(df, 1 - alpha / 2))
    nc = delta * math.sqrt(n) / sd
    return float(1.0 - special.nctdtr(df, nc, critical) + special.nctdtr(df, nc, -critical))


def paired_t_power(a: Sequence[float], b: Sequence[float], delta: float, alpha: float,
                   target: float) -> Power:
    """Power of the paired t-test of ``b`` against ``a`` to detect a drop ``delta``."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(d)
    sd = float(np.std(d, ddof=1)) if n >= 2 else math.inf
    if not math.isfinite(sd):
        return Power(0.0, 2)
    z = _z(1 - alpha / 2) + _z(target)
    needed = _documents((z * sd / delta) ** 2)
    while needed < MAX_DOCUMENTS and _t_power(needed, sd, delta, alpha) < target:
        needed += max(1, needed // 50)  # t's power is a little below z's: a few steps
    return Power(_t_power(n, sd, delta, alpha), needed)


def unpaired_power(se: float, documents: int | None, delta: float, alpha: float,
                   target: float) -> Power:
    """Power of the z-test on two runs' stderrs (``se`` of the difference, from ``documents``
    per run) to detect ``delta``; ``documents_needed`` is 0 when ``documents`` is unknown."""
    z_a = _z(1 - alpha / 2)
    if se == 0.0:
        return Power(1.0, documents or 2)
    power = float(special.ndtr(delta / se - z_a) + special.ndtr(-delta / se - z_a))
    if not documents:
        return Power(power, 0)
    return Power(power, _documents(documents * (se * (z_a + _z(target)) / delta) ** 2))
