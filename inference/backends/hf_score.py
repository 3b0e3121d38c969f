"""Scoring token requests with a causal transformers model: lm-eval's path and prefix sharing.

Scoring runs in two phases:

* ``Scorer.plan`` (host only, no model call): decides every forward of a batch and writes it
  down as index arrays: the token ids of each row, the cached context each row continues, the
  masks' inputs, the logits positions to keep, and for every scored token the (row, position,
  target token, output slot) it reads. Planning can run while the model computes another batch.
* ``Scorer.run`` (device): runs the planned forwards. Every tensor stays on the model's device
  until it is reduced to what the answer needs: the logits of the scored positions are gathered,
  log-softmaxed there (in lm-eval's dtype), and only the target tokens' log-probabilities and
  greedy flags are written to one output buffer, copied to the host once per batch.

Two plans:

* without sharing (``prefix_sharing=false``), lm-eval's ``HFLM._loglikelihood_tokens``:
  length-sorted batches of distinct inputs, right-padded with 0, no attention mask, full logits;
* with sharing, every shared prefix once: a radix tree over the inputs; an edge shared by enough
  inputs is forwarded once and its KV cache is reused (expanded along the batch) for the rows
  below it. Short jobs after the same cached context are packed into one row with a mask that
  keeps them apart (no padding, one copy of the context per row). Rows whose cached contexts
  differ share one forward: contexts are right-padded in the cache and masked, with explicit
  position ids. The KV of a batch's leading shared prefixes is kept across batches
  (:mod:`prefix_cache`): a later batch whose inputs start with a kept prefix reads it instead of
  computing it again.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from evalfleet.inference.backends.base import CANCELLED, ItemError, TokenScores
from evalfleet.inference.backends.hf_text import ScoreRequest
from evalfleet.inference.backends.prefix import (
    TrieNode,
    build_trie,
    subtree_inputs,
)
from evalfleet.inference.backends.prefix_cache import PrefixEntry, PrefixKVCache

BatchLimit = Callable[[int], int]  # padded row length -> max rows per forward
#: What one more forward costs, in positions computed, by device type (the default of
#: ``forward_cost``). A forward streams every weight once whatever its size: on this CPU
#: (SmolLM2-135M, float32, 2 cores) a 1 x 8 forward takes ~170 ms and each further position
#: ~3 ms, so a forward is worth ~64 positions of padding; a GPU forward at these sizes is bound
#: by its kernel launches, and padding is cheaper still.
FORWARD_COST_POSITIONS = {"cpu": 64, "default": 512}
# The children of several forwards are planned together (so that they fill forwards of their
# own) until their parents' KV, kept until the children have run, reaches this many positions.
LEVEL_KV_POSITIONS = 4096
# Jobs after one cached context are packed into rows of up to this many positions.
PACK_WIDTH = 512
# A subtree of up to this many tokens is one job (its edges under a tree mask), not one forward
# per level. Wider trees lose more to the mask than they save in forwards: on CPU an mmlu batch
# as one 936-token tree row ran at 216 positions/s, as three plain forwards at ~300.
TREE_WIDTH = 512
# Scored positions are log-softmaxed in blocks of at most this many bytes (full-vocabulary rows).
LOG_SOFTMAX_BLOCK_BYTES = 1 << 30
# Log-probabilities in these dtypes are summed in that dtype by lm-eval (``float(t.sum())``).
HALF_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(eq=False)
class ChunkPlan:
    """One forward, as index arrays (host memory).

    Rows are right-padded with token 0. ``ctx`` names each row's cached context as the ids of
    the KV segments it concatenates (empty: no cache). Every scored token ``s`` reads the
    log-probability of ``score_tok[s]`` at logits row ``flat_pos[score_pos[s]]`` (an index into
    the forward's logits flattened to ``[rows * kept, vocab]``) and writes it to output slot
    ``score_slot[s]``; scores are sorted by ``score_pos``.
    """

    ids: np.ndarray  # [rows, width] int64
    ctx: list[tuple[int, ...]]
    ctx_lens: np.ndarray  # [rows] int64
    widths: np.ndarray  # [rows] int64: positions used by each row
    mask: str | None  # None (plain causal), "2d" (padded contexts) or "4d" (packed rows)
    # "4d": the piece (a run of one job's tokens, see Piece) of each row position (-1:
    # padding); a position attends to its row's context, its own piece up to itself and the
    # pieces ``ancestors[piece]`` names (None: no piece has any)
    piece: np.ndarray | None  # [rows, width] int64
    ancestors: np.ndarray | None  # [pieces, pieces] bool: [a, b] when b is a proper ancestor
    position_ids: np.ndarray | None  # [rows, width]
    keep: np.ndarray | None  # row positions whose logits are kept (None: all)
    flat_pos: np.ndarray  # [P] int64
    score_pos: np.ndarray  # [S] int64, non-decreasing
    score_tok: np.ndarray  # [S] int64
    score_slot: np.ndarray  # [S] int64
    produce: list[tuple[int, int, int, int]] = field(default_factory=list)  # (seg, row, lo, hi)
    release: list[int] = field(default_factory=list)  # segments no later chunk reads
    # prefixes kept across batches: (cache entry, segments whose concatenation is its KV)
    remember: list[tuple[PrefixEntry, tuple[int, ...]]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def ctx_max(self) -> int:
        return int(self.ctx_lens.max()) if self.ctx_lens.size else 0

    @property
    def positions(self) -> int:
        """Model input positions this forward computes (padding included, cache excluded)."""
        return self.rows * self.width


@dataclass(eq=False)
class ScorePlan:
    """Every forward of one batch of requests; request ``r`` owns output slots
    ``offsets[r]:offsets[r + 1]`` (its scored tokens, in order)."""

    chunks: list[ChunkPlan]
    offsets: np.ndarray  # [n_requests + 1] int64
    # segments read from the prefix cache: (segment id, entry, its first ``length`` positions)
    preload: list[tuple[int, PrefixEntry, int]] = field(default_factory=list)
    reserved: list[PrefixEntry] = field(default_factory=list)  # entries this plan fills
    replan: Callable[[], ScorePlan] | None = None  # plans again reading only filled entries

    @property
    def positions(self) -> int:
        return sum(c.positions for c in self.chunks)

    @property
    def reused(self) -> int:
        """Positions read from the prefix cache instead of computed."""
        return sum(length for _, _, length in self.preload)

    @property
    def n_scored(self) -> int:
        return int(self.offsets[-1])


class Scorer:
    """Plans and runs the forwards for scoring; counts the positions they compute."""

    def __init__(self, model, device: torch.device, *, softmax_dtype: torch.dtype | None,
                 autocast_dtype: torch.dtype | None, min_shared_tokens: int = 32,
                 forward_cost: int | None = None, packing: bool = True,
                 prefix_cache_bytes: int = 0) -> None:
        self.model = model
        self.device = device
        self.softmax_dtype = softmax_dtype
        self.autocast_dtype = autocast_dtype
        self.min_shared_tokens = min_shared_tokens
        self.forward_cost = forward_cost if forward_cost is not None else \
            FORWARD_COST_POSITIONS.get(device.type, FORWARD_COST_POSITIONS["default"])
        self.positions = 0
        self.prefix_cache = PrefixKVCache(prefix_cache_bytes)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else (
            "past_key_values" if "past_key_values" in params else None)
        self._keep_kw = "logits_to_keep" in params
        self.supports_sharing = self._cache_kw is not None
        self._attn_impl = getattr(model.config, "_attn_implementation", None) or "eager"
        # packed rows need a custom 4D mask: sdpa and eager take one, flash kernels do not
        self.packing = packing and self._attn_impl in ("sdpa", "eager")
        self._stop = threading.Event()
        self._stopping = threading.Lock()

    def interrupt(self) -> None:
        """Stop the model (the worker stops), from any thread: the forward in progress ends at
        its next decoder layer (:class:`ForwardInterrupted`, raised inside the model), so does
        every later forward; a plan running answers the requests its finished forwards scored,
        ``CANCELLED`` the others. A forward of several seconds (a CPU's) is not waited for."""
        with self._stopping:
            if self._stop.is_set():
                return
            self._stop.set()
            # Hooks only from here on: a forward not interrupted pays nothing for them. Each
            # module gets one, once; a forward in progress reads a module's hook table only
            # when it is not empty, so it never iterates one while it is added to.
            for module in _interruption_points(self.model):
                module.register_forward_pre_hook(self._check_stop)

    def _check_stop(self, module: torch.nn.Module, args: tuple) -> None:
        if self._stop.is_set():
            raise ForwardInterrupted

    # ================================================================ entry points
    def score(self, reqs: Sequence[ScoreRequest], limit: BatchLimit,
              shared: bool) -> tuple[list[TokenScores], int]:
        """Scores for ``reqs`` in input order, and the positions computed for them."""
        plan = self.plan(reqs, limit, shared)
        return self.run(plan, reqs), plan.positions

    def plan(self, reqs: Sequence[ScoreRequest], limit: BatchLimit, shared: bool,
             window_batch: int | None = None, ready_only: bool = False) -> ScorePlan:
        """Every forward for ``reqs``, decided on the host.

        ``window_batch``: without sharing, cut ``reqs`` into consecutive runs of this many
        before sorting (lm-eval's batching of rolling windows). With sharing, the plan may read
        prefixes of the prefix cache, also ones a plan made before it fills when it runs
        (``ready_only``: only those already filled).
        """
        contlens = np.fromiter((r.contlen for r in reqs), dtype=np.int64, count=len(reqs))
        offsets = np.zeros(len(reqs) + 1, dtype=np.int64)
        np.cumsum(contlens, out=offsets[1:])
        seqs = [np.asarray(r.seq, dtype=np.int64) for r in reqs]
        if shared and self.supports_sharing:
            planner = _SharedPlanner(self, reqs, seqs, offsets, limit, ready_only)
            return ScorePlan(planner.plan(), offsets, planner.preload, planner.reserved,
                             replan=lambda: self.plan(reqs, limit, shared, window_batch, True))
        else:
            runs = [range(len(reqs))] if not window_batch else [
                range(i, min(len(reqs), i + window_batch))
                for i in range(0, len(reqs), window_batch)]
            chunks = [c for ids in runs
                      for c in self._plan_simple(reqs, seqs, offsets, list(ids), limit)]
        return ScorePlan(chunks, offsets)

    # ================================================================ planning: lm-eval's way
    def _plan_simple(self, reqs, seqs, offsets, ids: list[int],
                     limit: BatchLimit) -> list[ChunkPlan]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in ids:
            groups.setdefault(reqs[i].seq[:-1], []).append(i)
        keys = sorted(groups, key=lambda k: min((-len(reqs[i].sort_key), reqs[i].sort_key)
                                                for i in groups[k]))
        chunks, pos = [], 0
        while pos < len(keys):
            n = max(1, limit(len(keys[pos])))
            rows = keys[pos: pos + n]
            pos += n
            width = max(len(k) for k in rows)
            ids_arr = np.zeros((len(rows), width), dtype=np.int64)
            scored = _ScoredTokens()
            for i, key in enumerate(rows):
                ids_arr[i, : len(key)] = key
                for r in groups[key]:
                    scored.add(reqs[r], seqs[r], offsets[r], i * width, 0, 0, len(key))
            widths = np.fromiter((len(k) for k in rows), dtype=np.int64, count=len(rows))
            chunks.append(ChunkPlan(
                ids=ids_arr, ctx=[() for _ in rows], ctx_lens=np.zeros(len(rows), np.int64),
                widths=widths, mask=None, piece=None, ancestors=None, position_ids=None,
                keep=None,
                **scored.arrays()))
        return chunks

    # ================================================================ running
    def run(self, plan: ScorePlan, reqs: Sequence[ScoreRequest]
            ) -> list[TokenScores | ItemError]:
        """Run ``plan``'s forwards; scores of ``reqs`` (the planned requests) in input order
        (``CANCELLED`` for those an ``interrupt`` left unfinished).

        A plan reading a cached prefix that was never filled (the batch that was to compute it
        failed or has not run) is planned again from the filled entries only."""
        if any(not entry.ready for _, entry, _ in plan.preload):
            for entry in plan.reserved:
                self.prefix_cache.discard(entry)
            assert plan.replan is not None
            plan = plan.replan()
        try:
            return self._run(plan)
        finally:
            for entry in plan.reserved:  # not filled: a forward failed
                if not entry.ready:
                    self.prefix_cache.discard(entry)

    def _run(self, plan: ScorePlan) -> list[TokenScores | ItemError]:
        store: dict[int, torch.Tensor] = {}  # KV segment id -> [2 * layers, heads, len, dim]
        written = np.zeros(plan.n_scored, dtype=bool)  # output slots filled so far
        for seg, entry, length in plan.preload:
            assert entry.kv is not None
            store[seg] = entry.kv[:, :, :length]
            self.prefix_cache.note_hit(length)
        out_vals: torch.Tensor | None = None
        out_greedy = torch.zeros(plan.n_scored, dtype=torch.bool, device=self.device)
        for ch in plan.chunks:
            try:
                if self._stop.is_set():
                    raise ForwardInterrupted
                cache = self._assemble(ch, store) if ch.ctx_max else None
                mask, position_ids = self._mask(ch)
                logits, new_cache = self._forward(self._dev(ch.ids), cache, ch.keep,
                                                  want_cache=bool(ch.produce),
                                                  attention_mask=mask, position_ids=position_ids)
            except ForwardInterrupted:  # answer what the forwards so far finished
                scores = _collect(plan.offsets, self._host(out_vals), out_greedy.cpu())
                return _finished(scores, plan.offsets, written)
            del cache, mask, position_ids
            if len(ch.score_slot):
                vals, greedy = self._reduce(logits, ch)
                if out_vals is None:
                    out_vals = torch.zeros(plan.n_scored, dtype=vals.dtype, device=self.device)
                slots = self._dev(ch.score_slot)
                out_vals[slots] = vals
                out_greedy[slots] = greedy
                written[ch.score_slot] = True
            del logits
            for seg, row, lo, hi in ch.produce:
                store[seg] = torch.stack([t for layer in new_cache.layers for t in (
                    layer.keys[row, :, lo:hi], layer.values[row, :, lo:hi])])
            del new_cache
            for entry, segs in ch.remember:
                self.prefix_cache.fill(entry, store[segs[0]] if len(segs) == 1
                                       else torch.cat([store[s] for s in segs], dim=2))
            for seg in ch.release:
                store.pop(seg, None)
            self.positions += ch.positions
        return _collect(plan.offsets, self._host(out_vals), out_greedy.cpu())

    def _host(self, out_vals: torch.Tensor | None) -> torch.Tensor:
        """The output buffer on the host (an empty float32 one when nothing was scored)."""
        return out_vals.cpu() if out_vals is not None else torch.zeros(0, dtype=torch.float32)

    def _dev(self, array: np.ndarray) -> torch.Tensor:
        """A host index array on the model's device (pinned, asynchronous copy on CUDA)."""
        t = torch.from_numpy(array)
        if self.device.type == "cpu":
            return t
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _forward(self, ids: torch.Tensor, cache=None, keep: np.ndarray | None = None,
                 want_cache: bool = False, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None):
        """Forward of right-padded ``ids``; returns (logits [b, kept, V], cache or None)."""
        kwargs: dict = {}
        if cache is not None or want_cache:
            kwargs[self._cache_kw] = cache if cache is not None else DynamicCache(
                config=self.model.config)
            kwargs["use_cache"] = True
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = position_ids
        if keep is not None and self._keep_kw:
            kwargs["logits_to_keep"] = self._dev(keep)
        with self._autocast():
            out = self.model(ids, **kwargs)
        logits = out.logits
        if keep is not None and not self._keep_kw:
            logits = logits[:, self._dev(keep)]
        new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return logits, (new_cache if want_cache else None)

    def _reduce(self, logits: torch.Tensor, ch: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability, is-argmax) of every scored token of ``ch``, on the device.

        Only the scored positions' logits rows are log-softmaxed (row by row, as lm-eval's
        log-softmax over the whole tensor computes them), in blocks that bound the memory.
        """
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        itemsize = max((self.softmax_dtype or logits.dtype).itemsize, 4)
        block = max(1, LOG_SOFTMAX_BLOCK_BYTES // (vocab * itemsize))
        flat_pos, score_pos, score_tok = (self._dev(ch.flat_pos), self._dev(ch.score_pos),
                                          self._dev(ch.score_tok))
        vals, greedy = [], []
        bounds = np.searchsorted(ch.score_pos, np.arange(0, len(ch.flat_pos) + block, block))
        for k, p0 in enumerate(range(0, len(ch.flat_pos), block)):
            s0, s1 = int(bounds[k]), int(bounds[k + 1])
            # advanced indexing, not index_select: the latter is several times slower on CPU
            lsm = F.log_softmax(flat[flat_pos[p0: p0 + block]], dim=-1, dtype=self.softmax_dtype)
            pos, tok = score_pos[s0:s1] - p0, score_tok[s0:s1]
            vals.append(lsm[pos, tok])
            greedy.append(lsm.argmax(dim=-1)[pos] == tok)
            del lsm
        if len(vals) == 1:
            return vals[0], greedy[0]
        return torch.cat(vals), torch.cat(greedy)

    def _mask(self, ch: ChunkPlan) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The attention mask and position ids of ``ch``, built on the device."""
        if ch.mask is None:
            return None, None
        dev, ctx_max, width = self.device, ch.ctx_max, ch.width
        ctx_lens = self._dev(ch.ctx_lens)
        position_ids = self._dev(ch.position_ids)
        k = torch.arange(ctx_max + width, device=dev)
        if ch.mask == "2d":  # one job per row: each row's context, then its own tokens
            widths = self._dev(ch.widths)
            mask = (k[None, :] < ctx_lens[:, None]) | (
                (k[None, :] >= ctx_max) & (k[None, :] < ctx_max + widths[:, None]))
            return mask.long(), position_ids
        # packed rows: [rows, 1, width, ctx_max + width]. Each position attends to its row's
        # cached context, causally to its own piece and to the pieces above it in its job's
        # tree, never to the other jobs of its row. Padding attends to the context and padding.
        piece = self._dev(ch.piece)
        q = torch.arange(width, device=dev)
        row = (piece[:, :, None] == piece[:, None, :]) & (q[None, None, :] <= q[None, :, None])
        if ch.ancestors is not None:
            n_pieces = ch.ancestors.shape[0]
            # padding: a piece of its own, with no ancestors (padded on the host, a small array)
            ancestors = self._dev(np.pad(ch.ancestors, ((0, 1), (0, 1))))
            index = torch.where(piece < 0, n_pieces, piece)
            row |= ancestors[index[:, :, None], index[:, None, :]]
        context = (k[None, :ctx_max] < ctx_lens[:, None])[:, None, :].expand(-1, width, -1)
        allowed = torch.cat([context, row], dim=-1).unsqueeze(1)
        if self._attn_impl == "sdpa":
            return allowed, position_ids
        additive = torch.zeros(allowed.shape, dtype=self.model.dtype, device=dev)
        additive.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
        return additive, position_ids

    def _assemble(self, ch: ChunkPlan, store: dict[int, torch.Tensor]) -> DynamicCache:
        """A batch cache of each row's context, right-padded to the longest one."""
        first = ch.ctx[0]
        if all(c == first for c in ch.ctx):  # one context for all rows: expand, no copy
            one = torch.cat([store[s] for s in first], dim=2) if len(first) > 1 \
                else store[first[0]]
            data = [(one[2 * li].unsqueeze(0).expand(ch.rows, -1, -1, -1),
                     one[2 * li + 1].unsqueeze(0).expand(ch.rows, -1, -1, -1))
                    for li in range(one.shape[0] // 2)]
            return DynamicCache(ddp_cache_data=data, config=self.model.config)
        ref = store[next(c for c in ch.ctx if c)[0]]
        kv = torch.zeros((ref.shape[0], ch.rows, ref.shape[1], ch.ctx_max, ref.shape[3]),
                         dtype=ref.dtype, device=ref.device)
        for i, ctx in enumerate(ch.ctx):
            at = 0
            for s in ctx:
                seg = store[s]
                kv[:, i, :, at: at + seg.shape[2]] = seg
                at += seg.shape[2]
        data = [(kv[2 * li], kv[2 * li + 1]) for li in range(kv.shape[0] // 2)]
        return DynamicCache(ddp_cache_data=data, config=self.model.config)


def _collect(offsets: np.ndarray, vals: torch.Tensor, greedy: torch.Tensor) -> list[TokenScores]:
    """Per-request ``TokenScores`` from the flat output buffers (host tensors).

    For 16-bit log-probabilities each request also gets lm-eval's own sum: the tensor of its
    token log-probabilities summed in that dtype (``float(logits.sum())`` in ``HFLM``).
    """
    values = vals.float().numpy()
    flags = greedy.numpy()
    half = vals.dtype in HALF_DTYPES
    out = []
    for r in range(len(offsets) - 1):
        a, b = int(offsets[r]), int(offsets[r + 1])
        total = float(vals[a:b].sum()) if half else None
        out.append(TokenScores(values[a:b], flags[a:b], backend_total=total))
    return out


class ForwardInterrupted(Exception):  # noqa: N818 - not an error: the worker is stopping
    """Raised inside a forward of an interrupted scorer's model (``Scorer.interrupt``)."""


def _interruption_points(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Where a forward checks for an interruption: before each decoder layer (the longest
    ``ModuleList``) and the output head; the model itself when it has neither."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    points = list(max(lists, key=len)) if lists else []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module):
        points.append(head)
    return points or [model]


def _finished(scores: list[TokenScores], offsets: np.ndarray, written: np.ndarray
              ) -> list[TokenScores | ItemError]:
    """``scores`` of the requests whose every output slot was ``written``; ``CANCELLED`` for
    the others."""
    unwritten = np.concatenate(([0], np.cumsum(~written)))
    done = unwritten[offsets[1:]] == unwritten[offsets[:-1]]
    return [s if ok else CANCELLED for s, ok in zip(scores, done.tolist(), strict=True)]


def _scored_range(req: ScoreRequest, base: int, length: int) -> tuple[int, int]:
    """The input positions of ``req`` scored among ``[base, base + length)`` (empty: lo >= hi)."""
    return max(req.first_scored, base), min(req.n_inputs, base + length)


class _ScoredTokens:
    """Collects the scored tokens of one chunk and turns them into its index arrays."""

    def __init__(self) -> None:
        self.codes: list[np.ndarray] = []
        self.toks: list[np.ndarray] = []
        self.slots: list[np.ndarray] = []

    def add(self, req: ScoreRequest, seq: np.ndarray, offset: int, row_base: int, base: int,
            at: int, length: int, keep: np.ndarray | None = None) -> None:
        """Scored tokens of ``req`` among the positions ``[base, base + length)`` of its input,
        which sit at ``at`` in a row whose first flat logits index is ``row_base``."""
        lo, hi = _scored_range(req, base, length)
        if lo >= hi:
            return
        pos = np.arange(at + lo - base, at + hi - base, dtype=np.int64)
        if keep is not None:
            pos = np.searchsorted(keep, pos)
        self.codes.append(row_base + pos)
        self.toks.append(seq[lo + 1: hi + 1])
        first = offset + lo - req.first_scored
        self.slots.append(np.arange(first, first + hi - lo, dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        codes = np.concatenate(self.codes) if self.codes else np.zeros(0, np.int64)
        flat_pos, score_pos = np.unique(codes, return_inverse=True)
        order = np.argsort(score_pos, kind="stable")
        toks = np.concatenate(self.toks) if self.toks else np.zeros(0, np.int64)
        slots = np.concatenate(self.slots) if self.slots else np.zeros(0, np.int64)
        return {"flat_pos": flat_pos.astype(np.int64),
                "score_pos": score_pos.reshape(-1)[order].astype(np.int64),
                "score_tok": toks[order], "score_slot": slots[order]}


# ==================================================================== planning: prefix sharing
@dataclass(eq=False)
class Piece:
    """A run of a job's tokens: ``length`` of them from ``offset`` in the job, the input
    positions ``[base, base + length)`` of the requests ``req_ids``, continuing the piece
    ``parent`` of the same job (-1: the job's cached context)."""

    offset: int
    length: int
    base: int
    parent: int
    req_ids: list[int]


@dataclass(eq=False)
class Job:
    """Forward ``tokens`` after the cached context ``ctx`` (segment ids, ``ctx_len`` positions).

    ``node`` is set when the job computes a shared trie edge whose children run next; its KV
    becomes segment ``seg``. ``pieces`` is set when the job is a whole subtree of the trie in
    one forward: its edges one after the other (depth first), each attending to the edges above
    it (a tree mask), so that no edge is computed twice and no level waits for another.
    """

    ctx: tuple[int, ...]
    ctx_len: int
    tokens: list[int]
    req_ids: list[int]
    node: TrieNode | None
    seg: int = -1
    remember: PrefixEntry | None = None  # keep the KV of the whole path to ``node`` here
    pieces: list[Piece] | None = None

    def piece_list(self) -> list[Piece]:
        """The job's pieces (one for a job without a tree)."""
        if self.pieces is not None:
            return self.pieces
        return [Piece(0, len(self.tokens), self.ctx_len, -1, self.req_ids)]


@dataclass(eq=False)
class Row:
    """Jobs forwarded side by side in one row after the same cached context."""

    ctx: tuple[int, ...]
    ctx_len: int
    jobs: list[Job]

    @property
    def width(self) -> int:
        return sum(len(j.tokens) for j in self.jobs)

    def tokens(self) -> list[int]:
        return [t for j in self.jobs for t in j.tokens]

    def placed(self) -> list[tuple[Job, int]]:
        """Each job with its offset in the row."""
        out, at = [], 0
        for job in self.jobs:
            out.append((job, at))
            at += len(job.tokens)
        return out


class _SharedPlanner:
    """Plans the forwards of one batch over its token trie, depth first (a shared edge's
    children run right after it, so its KV segment is freed early)."""

    def __init__(self, scorer: Scorer, reqs: Sequence[ScoreRequest], seqs: list[np.ndarray],
                 offsets: np.ndarray, limit: BatchLimit, ready_only: bool = False) -> None:
        self.scorer = scorer
        self.reqs, self.seqs, self.offsets, self.limit = reqs, seqs, offsets, limit
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(r.seq[:-1], []).append(i)
        self.keys = list(groups)
        self.members = [groups[k] for k in self.keys]
        self.chunks: list[ChunkPlan] = []
        self._segs = itertools.count()
        self.cache = scorer.prefix_cache
        self.ready_only = ready_only
        self.preload: list[tuple[int, PrefixEntry, int]] = []
        self.reserved: list[PrefixEntry] = []
        # (node, carried length) -> the jobs planned below the node (see _copies_below)
        self._below: dict[tuple[TrieNode, int], int] = {}

    def plan(self) -> list[ChunkPlan]:
        jobs: list[Job] = []
        for child in build_trie(self.keys).children:
            self._root_edge(child, jobs)
        self._run(jobs)
        last_use: dict[int, int] = {}
        for c, ch in enumerate(self.chunks):
            for seg, *_ in ch.produce:
                last_use.setdefault(seg, c)
            for ctx in ch.ctx:
                for seg in ctx:
                    last_use[seg] = c
        for seg, c in last_use.items():
            self.chunks[c].release.append(seg)
        return self.chunks

    def _req_ids(self, input_ids: Sequence[int]) -> list[int]:
        return [r for g in input_ids for r in self.members[g]]

    def _root_edge(self, child: TrieNode, jobs: list[Job]) -> None:
        """Plan a leading edge of the trie, reading its first positions from the prefix cache
        when a kept prefix covers at least ``min_shared_tokens`` of them. Only context is read
        so: the cached part ends before every scored position below the edge."""
        inputs = subtree_inputs(child)
        if self.cache.enabled:
            first_scored = min(self.reqs[r].first_scored for g in inputs
                               for r in self.members[g])
            path = self.keys[inputs[0]][: min(child.end, first_scored)]
            entry, length = self.cache.match(path)
            if entry is not None and not (self.ready_only and not entry.ready) \
                    and length >= self.scorer.min_shared_tokens:
                seg = next(self._segs)
                self.preload.append((seg, entry, length))
                if length < len(child.tokens):  # the rest of the edge runs after the cached part
                    rest = TrieNode(length, child.tokens[length:], child.children, child.inputs,
                                    child.n_paths)
                    self._expand(rest, [], [], (seg,), length, jobs, root=True)
                else:  # the whole edge (no input ends on it: it ends before a scored position)
                    for grandchild in child.children:
                        self._expand(grandchild, [], [], (seg,), length, jobs)
                return
        self._expand(child, [], [], (), 0, jobs, root=True)

    def _remember(self, job: Job, input_id: int, end: int) -> None:
        """Reserve a cache entry for the path from the first position to ``end``, the end of
        ``job``'s tokens (of its first piece, for a tree job)."""
        entry = self.cache.reserve(self.keys[input_id][:end])
        if entry is not None:
            job.remember = entry
            self.reserved.append(entry)

    def _children(self, node: TrieNode, ctx: tuple[int, ...], ctx_len: int) -> list[Job]:
        jobs: list[Job] = []
        for child in node.children:
            self._expand(child, [], [], ctx, ctx_len, jobs)
        return jobs

    def _expand(self, child: TrieNode, carried: list[int], carried_ids: list[int],
                ctx: tuple[int, ...], ctx_len: int, jobs: list[Job], root: bool = False) -> None:
        """Plan ``child`` with ``carried`` (an edge too short to share) prepended. ``root``:
        the path starts at the first position (or right after a cached prefix): a shared edge
        there is kept in the prefix cache."""
        tokens, ids = carried + child.tokens, carried_ids + child.inputs
        if not child.children:
            jobs.append(Job(ctx, ctx_len, tokens, self._req_ids(ids), None))
            return
        shared = self._worth_sharing(child, len(carried))
        if self._as_tree(child, len(carried)):
            job = self._tree_job(child, carried, carried_ids, ctx, ctx_len)
        elif shared:
            job = Job(ctx, ctx_len, tokens, self._req_ids(carried_ids + subtree_inputs(child)),
                      child)
        else:  # not worth its own forward: each path below repeats it
            for k, grandchild in enumerate(child.children):
                self._expand(grandchild, tokens, ids if k == 0 else [], ctx, ctx_len, jobs,
                             root)
            return
        if shared and root and self.cache.enabled:
            self._remember(job, subtree_inputs(child)[0], child.end)
        jobs.append(job)

    def _as_tree(self, node: TrieNode, carried_len: int) -> bool:
        """Whether ``node``'s subtree (``carried_len`` tokens prepended) is one tree job."""
        return self.scorer.packing and \
            _subtree_size(node, TREE_WIDTH) <= TREE_WIDTH - carried_len

    def _worth_sharing(self, node: TrieNode, carried_len: int) -> bool:
        """Whether ``node``'s edge (``carried_len`` tokens prepended) is worth a job of its own:
        left unshared, its tokens are repeated in every job planned below it, so sharing saves
        ``(copies - 1) * length`` positions, which must reach ``min_shared_tokens``."""
        copies = self._copies_below(node, carried_len)
        return copies >= 2 and \
            (copies - 1) * (carried_len + len(node.tokens)) >= self.scorer.min_shared_tokens

    def _copies(self, node: TrieNode, carried_len: int) -> int:
        """How many jobs ``_expand`` plans for ``node`` with ``carried_len`` tokens carried
        (each repeats them)."""
        if not node.children or self._as_tree(node, carried_len) \
                or self._worth_sharing(node, carried_len):
            return 1
        return self._copies_below(node, carried_len)

    def _copies_below(self, node: TrieNode, carried_len: int) -> int:
        """How many jobs ``_expand`` plans for ``node``'s children when ``node`` is not shared
        (``carried_len`` tokens carried into it); memoised, so that a trie is walked once per
        carried length and not once per ancestor's question."""
        key = (node, carried_len)
        if key not in self._below:
            length = carried_len + len(node.tokens)
            self._below[key] = sum(self._copies(c, length) for c in node.children)
        return self._below[key]

    def _tree_job(self, node: TrieNode, carried: list[int], carried_ids: list[int],
                  ctx: tuple[int, ...], ctx_len: int) -> Job:
        """One job for ``node``'s whole subtree (``carried`` prepended): its edges depth first."""
        tokens: list[int] = []
        pieces: list[Piece] = []

        def add(n: TrieNode, head: list[int], head_ids: list[int], parent: int) -> None:
            index = len(pieces)
            pieces.append(Piece(len(tokens), len(head) + len(n.tokens), n.start - len(head),
                                parent, self._req_ids(head_ids + subtree_inputs(n))))
            tokens.extend(head)
            tokens.extend(n.tokens)
            for c in n.children:
                add(c, [], [], index)

        add(node, carried, carried_ids, -1)
        return Job(ctx, ctx_len, tokens, pieces[0].req_ids, None, pieces=pieces)

    def _run(self, jobs: list[Job]) -> None:
        rows = self._pack(jobs)
        rows.sort(key=lambda r: (-r.width, -r.ctx_len))
        children: list[Job] = []
        kept = 0  # positions of KV these children read that no forward has released yet
        for chunk in self._partition(rows):
            for row in chunk:
                for job in row.jobs:
                    if job.node is not None or job.remember is not None:
                        job.seg = next(self._segs)
            self.chunks.append(self._chunk(chunk))
            for row in chunk:
                for job in row.jobs:
                    if job.node is not None:
                        children.extend(self._children(job.node, (*job.ctx, job.seg),
                                                       job.node.end))
                        kept += len(job.tokens)
            if kept >= LEVEL_KV_POSITIONS:
                self._run(children)
                children, kept = [], 0
        if children:
            self._run(children)

    def _partition(self, rows: list[Row]) -> list[list[Row]]:
        """``rows`` (by decreasing width) cut into consecutive forwards, each within the batch
        limit for its padded length (the longest cached context plus the widest row), so that
        the positions computed (padding included) plus ``forward_cost`` per forward are least.
        """
        n, cost = len(rows), self.scorer.forward_cost
        best = [0] * (n + 1)  # best[i]: the least cost of rows[i:]
        cut = [n] * (n + 1)  # rows[i:cut[i]] is the first forward of that best
        for i in range(n - 1, -1, -1):
            width, ctx_max = rows[i].width, 0
            best[i] = -1
            for j in range(i, n):
                ctx_max = max(ctx_max, rows[j].ctx_len)
                if j > i and j - i + 1 > self.limit(ctx_max + width):
                    break
                total = cost + (j - i + 1) * width + best[j + 1]
                if best[i] < 0 or total < best[i]:
                    best[i], cut[i] = total, j + 1
        out, i = [], 0
        while i < n:
            out.append(rows[i: cut[i]])
            i = cut[i]
        return out

    def _pack(self, jobs: list[Job]) -> list[Row]:
        """Rows of jobs: short jobs after the same cached context share a row (first fit by
        decreasing length, up to ``PACK_WIDTH`` positions); the others get a row each."""
        rows: list[Row] = []
        by_ctx: dict[tuple[int, ...], list[Job]] = {}
        for job in jobs:
            if self.scorer.packing and len(job.tokens) <= PACK_WIDTH:
                by_ctx.setdefault(job.ctx, []).append(job)
            else:
                rows.append(Row(job.ctx, job.ctx_len, [job]))
        for group in by_ctx.values():
            open_rows: list[Row] = []
            for job in sorted(group, key=lambda j: -len(j.tokens)):
                row = next((r for r in open_rows if r.width + len(job.tokens) <= PACK_WIDTH), None)
                if row is None:
                    row = Row(job.ctx, job.ctx_len, [])
                    open_rows.append(row)
                row.jobs.append(job)
            rows.extend(open_rows)
        return rows

    def _chunk(self, chunk: list[Row]) -> ChunkPlan:
        """The index arrays of one forward over ``chunk``'s rows."""
        n, width = len(chunk), max(r.width for r in chunk)
        ctx_lens = np.fromiter((r.ctx_len for r in chunk), dtype=np.int64, count=n)
        widths = np.fromiter((r.width for r in chunk), dtype=np.int64, count=n)
        ctx_max = int(ctx_lens.max())
        ids = np.zeros((n, width), dtype=np.int64)
        packed = any(len(r.jobs) > 1 or r.jobs[0].pieces is not None for r in chunk)
        mask = "4d" if packed else ("2d" if (ctx_lens != ctx_max).any() else None)
        piece = position_ids = ancestors = None
        if mask is not None:
            piece = np.full((n, width), -1, dtype=np.int64)
            position_ids = ctx_lens[:, None] + np.arange(width, dtype=np.int64)[None, :]
        parents: list[int] = []  # chunk-wide piece index -> its parent's (-1: none)
        needed: list[np.ndarray] = []
        produce: list[tuple[int, int, int, int]] = []
        remember: list[tuple[PrefixEntry, tuple[int, ...]]] = []
        for i, row in enumerate(chunk):
            for job, at in row.placed():
                length = len(job.tokens)
                ids[i, at: at + length] = job.tokens
                first = len(parents)
                for p in job.piece_list():
                    start = at + p.offset
                    if mask is not None:
                        piece[i, start: start + p.length] = len(parents)
                        position_ids[i, start: start + p.length] = np.arange(
                            p.base, p.base + p.length)
                    parents.append(first + p.parent if p.parent >= 0 else -1)
                    for r in p.req_ids:
                        req = self.reqs[r]
                        lo, hi = _scored_range(req, p.base, p.length)
                        if lo < hi:
                            needed.append(np.arange(start + lo - p.base, start + hi - p.base))
                if job.seg >= 0:  # its KV (a tree job's: its first piece's) is read later
                    kept = length if job.pieces is None else job.pieces[0].length
                    produce.append((job.seg, i, ctx_max + at, ctx_max + at + kept))
                if job.remember is not None:
                    remember.append((job.remember, (*job.ctx, job.seg)))
        if mask == "4d" and any(p >= 0 for p in parents):
            ancestors = np.zeros((len(parents), len(parents)), dtype=bool)
            for a, p in enumerate(parents):
                if p >= 0:
                    ancestors[a] = ancestors[p]
                    ancestors[a, p] = True
        keep = np.unique(np.concatenate(needed)).astype(np.int64) if needed \
            else np.zeros(1, np.int64)
        scored = _ScoredTokens()
        for i, row in enumerate(chunk):
            for job, at in row.placed():
                for p in job.piece_list():
                    for r in p.req_ids:
                        scored.add(self.reqs[r], self.seqs[r], self.offsets[r], i * len(keep),
                                   p.base, at + p.offset, p.length, keep)
        return ChunkPlan(ids=ids, ctx=[r.ctx for r in chunk], ctx_lens=ctx_lens, widths=widths,
                         mask=mask, piece=piece, ancestors=ancestors,
                         position_ids=position_ids, keep=keep, produce=produce,
                         remember=remember, **scored.arrays())


def _subtree_size(node: TrieNode, limit: int) -> int:
    """The tokens of ``node``'s subtree, counted up to a little past ``limit``."""
    total = len(node.tokens)
    for child in node.children:
        if total > limit:
            break
        total += _subtree_size(child, limit - total)
    return total
