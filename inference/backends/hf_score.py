"""Scoring token requests with a causal transformers model: lm-eval's path and prefix sharing.

* ``score_simple`` reproduces ``HFLM._loglikelihood_tokens``: length-sorted batches of distinct
  inputs, right-padded with 0, no attention mask, log-softmax over full logits.
* ``score_shared`` forwards every shared prefix once: a radix tree over the inputs; an edge
  shared by enough inputs is forwarded once and its KV cache is reused (expanded along the
  batch) for the rows below it. Short jobs after the same cached context are packed into one
  row with a mask that keeps them apart (no padding, one copy of the context per row). Rows
  whose cached contexts differ share one forward: contexts are right-padded in the cache and
  masked, with explicit position ids.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from evalfleet.inference.backends.base import TokenScores
from evalfleet.inference.backends.hf_text import ScoreRequest
from evalfleet.inference.backends.prefix import (
    TrieNode,
    build_trie,
    subtree_inputs,
)

BatchLimit = Callable[[int], int]  # padded row length -> max rows per forward
# A row may always take this much padding: below it, a separate forward costs more than padding.
SHORT_ROW_PADDING = 16
# Jobs after one cached context are packed into rows of up to this many positions.
PACK_WIDTH = 512


class Scorer:
    """Runs forwards for scoring and counts the positions they compute."""

    def __init__(self, model, device: torch.device, *, softmax_dtype: torch.dtype | None,
                 autocast_dtype: torch.dtype | None, min_shared_tokens: int = 32,
                 max_padding: float = 0.1, packing: bool = True) -> None:
        self.model = model
        self.device = device
        self.softmax_dtype = softmax_dtype
        self.autocast_dtype = autocast_dtype
        self.min_shared_tokens = min_shared_tokens
        self.max_padding = max_padding
        self.positions = 0
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else (
            "past_key_values" if "past_key_values" in params else None)
        self._keep_kw = "logits_to_keep" in params
        self.supports_sharing = self._cache_kw is not None
        self._attn_impl = getattr(model.config, "_attn_implementation", None) or "eager"
        # packed rows need a custom 4D mask: sdpa and eager take one, flash kernels do not
        self.packing = packing and self._attn_impl in ("sdpa", "eager")

    # ---------------------------------------------------------------- forwards
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _forward(self, rows: Sequence[Sequence[int]], cache=None, keep: list[int] | None = None,
                 want_cache: bool = False, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None):
        """Right-padded forward of ``rows``; returns (logits [b, kept, V], cache or None)."""
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        kwargs: dict = {}
        if cache is not None or want_cache:
            kwargs[self._cache_kw] = cache if cache is not None else DynamicCache(
                config=self.model.config)
            kwargs["use_cache"] = True
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
            kwargs["position_ids"] = position_ids.to(self.device)
        if keep is not None and self._keep_kw:
            kwargs["logits_to_keep"] = torch.tensor(keep, dtype=torch.long, device=self.device)
        with self._autocast():
            out = self.model(ids.to(self.device), **kwargs)
        self.positions += len(rows) * width
        logits = out.logits
        if keep is not None and not self._keep_kw:
            logits = logits[:, keep]
        new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return logits, (new_cache if want_cache else None)

    def _serve(self, logprobs: torch.Tensor, keep_index: dict[int, int] | None, base: int,
               row_len: int, req_ids: Sequence[int], reqs: Sequence[ScoreRequest],
               out_lp: list[np.ndarray], out_gr: list[np.ndarray], offset: int = 0) -> None:
        """Fill scores of ``req_ids`` for positions ``[base, base+row_len)``, which sit at
        ``offset`` in their row."""
        for r in req_ids:
            req = reqs[r]
            lo, hi = max(req.first_scored, base), min(req.n_inputs, base + row_len)
            if lo >= hi:
                continue
            idx = (torch.arange(lo - base, hi - base) if keep_index is None
                   else torch.tensor([keep_index[t - base + offset] for t in range(lo, hi)]))
            rows = logprobs[idx]
            targets = torch.tensor(req.seq[lo + 1: hi + 1], dtype=torch.long)
            vals = rows.gather(1, targets.unsqueeze(1)).squeeze(1)
            greedy = rows.argmax(dim=-1) == targets
            s = lo - req.first_scored
            out_lp[r][s: s + hi - lo] = vals.float().numpy()
            out_gr[r][s: s + hi - lo] = greedy.numpy()

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype).cpu()

    # ---------------------------------------------------------------- entry points
    def score(self, reqs: Sequence[ScoreRequest], limit: BatchLimit,
              shared: bool) -> list[TokenScores]:
        """Scores for ``reqs`` in input order."""
        out_lp = [np.zeros(r.contlen, dtype=np.float32) for r in reqs]
        out_gr = [np.zeros(r.contlen, dtype=bool) for r in reqs]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(r.seq[:-1], []).append(i)
        if shared and self.supports_sharing:
            self._score_shared(reqs, groups, limit, out_lp, out_gr)
        else:
            self._score_simple(reqs, groups, limit, out_lp, out_gr)
        return [TokenScores(lp, gr) for lp, gr in zip(out_lp, out_gr, strict=True)]

    def _score_simple(self, reqs, groups, limit, out_lp, out_gr) -> None:
        keys = sorted(groups, key=lambda k: min((-len(reqs[i].sort_key), reqs[i].sort_key)
                                                for i in groups[k]))
        pos = 0
        while pos < len(keys):
            n = max(1, limit(len(keys[pos])))
            chunk = keys[pos: pos + n]
            pos += n
            logits, _ = self._forward(chunk)
            logprobs = self._log_softmax(logits)
            for row, key in enumerate(chunk):
                self._serve(logprobs[row], None, 0, len(key), groups[key], reqs, out_lp, out_gr)

    def _score_shared(self, reqs, groups, limit, out_lp, out_gr) -> None:
        keys = list(groups)
        members = [groups[k] for k in keys]
        root = build_trie(keys)

        def req_ids(input_ids: Sequence[int]) -> list[int]:
            return [r for g in input_ids for r in members[g]]

        def plan(node: TrieNode, ctx: tuple[Segment, ...], ctx_len: int) -> list[Job]:
            jobs: list[Job] = []
            for child in node.children:
                expand(child, [], [], ctx, ctx_len, jobs)
            return jobs

        def expand(child: TrieNode, carried: list[int], carried_ids: list[int],
                   ctx: tuple[Segment, ...], ctx_len: int, jobs: list[Job]) -> None:
            """Plan ``child`` with ``carried`` (an edge too short to share) prepended."""
            tokens, ids = carried + child.tokens, carried_ids + child.inputs
            if not child.children:
                jobs.append(Job(ctx, ctx_len, tokens, req_ids(ids), None))
            elif (child.n_paths >= 2
                  and (child.n_paths - 1) * len(tokens) >= self.min_shared_tokens):
                jobs.append(Job(ctx, ctx_len, tokens,
                                req_ids(carried_ids + subtree_inputs(child)), child))
            else:  # not worth its own forward: each path below repeats it
                for k, grandchild in enumerate(child.children):
                    expand(grandchild, tokens, ids if k == 0 else [], ctx, ctx_len, jobs)

        def run(jobs: list[Job]) -> None:
            rows = self._pack(jobs)
            rows.sort(key=lambda r: (-r.width, -r.ctx_len))
            pos = 0
            while pos < len(rows):
                n = max(1, limit(rows[pos].ctx_len + rows[pos].width))
                width = rows[pos].width
                slack = max(self.max_padding * width, SHORT_ROW_PADDING)
                end = pos + 1
                while end < min(len(rows), pos + n) and width - rows[end].width <= slack:
                    end += 1
                chunk = rows[pos: end]
                pos = end
                segments = self._run_chunk(chunk, reqs, out_lp, out_gr)
                children: list[Job] = []
                for job, seg in segments:
                    children.extend(plan(job.node, (*job.ctx, seg), job.node.end))
                del segments
                run(children)

        run(plan(root, (), 0))

    def _pack(self, jobs: list[Job]) -> list[Row]:
        """Rows of jobs: short jobs after the same cached context share a row (first fit by
        decreasing length, up to ``PACK_WIDTH`` positions); the others get a row each."""
        rows: list[Row] = []
        by_ctx: dict[int, list[Job]] = {}
        for job in jobs:
            if self.packing and len(job.tokens) <= PACK_WIDTH:
                by_ctx.setdefault(id(job.ctx), []).append(job)
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

    def _run_chunk(self, chunk: list[Row], reqs, out_lp, out_gr) -> list[tuple[Job, Segment]]:
        """One forward for ``chunk``; returns the new KV segment of each job with a trie node."""
        keep_set: set[int] = set()
        for row in chunk:
            for job, at in row.placed():
                keep_set.update(at + k for k in _needed(job, reqs))
        keep = sorted(keep_set) or [0]
        want = any(j.node is not None for row in chunk for j in row.jobs)
        ctx_max = max(r.ctx_len for r in chunk)
        width = max(r.width for r in chunk)
        cache = mask = position_ids = None
        if ctx_max:
            cache = self._assemble(chunk, ctx_max)
        if any(len(r.jobs) > 1 for r in chunk):
            mask, position_ids = self._packed_mask(chunk, ctx_max, width)
        elif any(r.ctx_len != ctx_max for r in chunk):
            mask = torch.zeros((len(chunk), ctx_max + width), dtype=torch.long)
            position_ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                mask[i, : r.ctx_len] = 1
                mask[i, ctx_max: ctx_max + r.width] = 1
                position_ids[i] = torch.arange(r.ctx_len, r.ctx_len + width)
        logits, new_cache = self._forward([r.tokens() for r in chunk], cache, keep,
                                          want_cache=want, attention_mask=mask,
                                          position_ids=position_ids)
        logprobs = self._log_softmax(logits)
        index = {t: k for k, t in enumerate(keep)}
        segments: list[tuple[Job, Segment]] = []
        for i, row in enumerate(chunk):
            for job, at in row.placed():
                self._serve(logprobs[i], index, job.ctx_len, len(job.tokens), job.req_ids, reqs,
                            out_lp, out_gr, offset=at)
                if job.node is not None:
                    lo, hi = ctx_max + at, ctx_max + at + len(job.tokens)
                    segments.append((job, [(layer.keys[i, :, lo:hi].clone(),
                                            layer.values[i, :, lo:hi].clone())
                                           for layer in new_cache.layers]))
        return segments

    def _packed_mask(self, chunk: list[Row], ctx_max: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A 4D mask [rows, 1, width, ctx_max + width] and position ids for packed rows.

        Each job attends to its row's cached context and causally to itself, never to the other
        jobs of its row; its positions continue from the context. Padding attends to itself.
        """
        allowed = torch.zeros((len(chunk), 1, width, ctx_max + width), dtype=torch.bool)
        position_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            for job, at in row.placed():
                n = len(job.tokens)
                allowed[i, 0, at: at + n, : row.ctx_len] = True
                allowed[i, 0, at: at + n, ctx_max + at: ctx_max + at + n] = torch.ones(
                    (n, n), dtype=torch.bool).tril()
                position_ids[i, at: at + n] = torch.arange(row.ctx_len, row.ctx_len + n)
            pad = torch.arange(row.width, width)
            allowed[i, 0, pad, ctx_max + pad] = True
        if self._attn_impl == "sdpa":
            return allowed, position_ids
        additive = torch.zeros(allowed.shape, dtype=self.model.dtype)
        additive.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
        return additive, position_ids

    def _assemble(self, chunk: list[Job], ctx_max: int):
        """A batch cache of each job's context, right-padded to ``ctx_max``."""
        first = chunk[0].ctx
        uniform = all(len(j.ctx) == len(first) and all(a is b for a, b in zip(j.ctx, first,
                                                                              strict=True))
                      for j in chunk)
        if uniform:
            one = [(torch.cat([seg[li][0] for seg in first], dim=1),
                    torch.cat([seg[li][1] for seg in first], dim=1)) for li in range(len(first[0]))]
            data = [(k.unsqueeze(0).expand(len(chunk), -1, -1, -1),
                     v.unsqueeze(0).expand(len(chunk), -1, -1, -1)) for k, v in one]
            return DynamicCache(ddp_cache_data=data, config=self.model.config)
        data = []
        n_layers = len(first[0]) if first else len(next(j.ctx for j in chunk if j.ctx)[0])
        for li in range(n_layers):
            ref = next(j.ctx for j in chunk if j.ctx)[0][li][0]
            shape = (len(chunk), ref.shape[0], ctx_max, ref.shape[2])
            k = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
            v = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
            for i, j in enumerate(chunk):
                at = 0
                for seg in j.ctx:
                    n = seg[li][0].shape[1]
                    k[i, :, at: at + n] = seg[li][0]
                    v[i, :, at: at + n] = seg[li][1]
                    at += n
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data, config=self.model.config)


Segment = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values): [heads, len, dim]


@dataclass(eq=False)
class Job:
    """Forward ``tokens`` after the cached context ``ctx`` (``ctx_len`` positions).

    ``node`` is set when the job computes a shared trie edge whose children run next.
    """

    ctx: tuple[Segment, ...]
    ctx_len: int
    tokens: list[int]
    req_ids: list[int]
    node: TrieNode | None


@dataclass(eq=False)
class Row:
    """Jobs forwarded side by side in one row after the same cached context."""

    ctx: tuple[Segment, ...]
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


def _needed(job: Job, reqs: Sequence[ScoreRequest]) -> set[int]:
    """Row positions of ``job`` whose logits some request scores."""
    out: set[int] = set()
    base, length = job.ctx_len, len(job.tokens)
    for r in job.req_ids:
        lo = max(reqs[r].first_scored, base)
        hi = min(reqs[r].n_inputs, base + length)
        out.update(range(lo - base, hi - base))
    return out
