"""Scoring token requests with a causal transformers model: lm-eval's path and prefix sharing.

* ``score_simple`` reproduces ``HFLM._loglikelihood_tokens``: length-sorted batches of distinct
  inputs, right-padded with 0, no attention mask, log-softmax over full logits.
* ``score_shared`` forwards every shared prefix once: a radix tree over the inputs; an edge
  shared by enough inputs is forwarded once and its KV cache is reused (expanded along the
  batch) for the rows below it. Jobs whose cached contexts differ share one forward: contexts
  are right-padded in the cache and masked, with explicit position ids.
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


class Scorer:
    """Runs forwards for scoring and counts the positions they compute."""

    def __init__(self, model, device: torch.device, *, softmax_dtype: torch.dtype | None,
                 autocast_dtype: torch.dtype | None, min_shared_tokens: int = 8,
                 max_padding: float = 0.1) -> None:
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
               out_lp: list[np.ndarray], out_gr: list[np.ndarray]) -> None:
        """Fill scores of ``req_ids`` for positions ``[base, base+row_len)`` of one row."""
        for r in req_ids:
            req = reqs[r]
            lo, hi = max(req.first_scored, base), min(req.n_inputs, base + row_len)
            if lo >= hi:
                continue
            idx = (torch.arange(lo - base, hi - base) if keep_index is None
                   else torch.tensor([keep_index[t - base] for t in range(lo, hi)]))
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
            jobs.sort(key=lambda j: (-len(j.tokens), -j.ctx_len))
            pos = 0
            while pos < len(jobs):
                n = max(1, limit(jobs[pos].ctx_len + len(jobs[pos].tokens)))
                width = len(jobs[pos].tokens)
                slack = max(self.max_padding * width, SHORT_ROW_PADDING)
                end = pos + 1
                while end < min(len(jobs), pos + n) and width - len(jobs[end].tokens) <= slack:
                    end += 1
                chunk = jobs[pos: end]
                pos = end
                segments = self._run_chunk(chunk, reqs, out_lp, out_gr)
                children: list[Job] = []
                for job, seg in zip(chunk, segments, strict=True):
                    if job.node is not None:
                        children.extend(plan(job.node, (*job.ctx, seg), job.node.end))
                del segments
                run(children)

        run(plan(root, (), 0))

    def _run_chunk(self, chunk: list[Job], reqs, out_lp, out_gr) -> list[Segment | None]:
        """One forward for ``chunk``; returns each extend job's new KV segment."""
        keep = sorted(set().union(*(_needed(j, reqs) for j in chunk))) or [0]
        want = any(j.node is not None for j in chunk)
        ctx_max = max(j.ctx_len for j in chunk)
        width = max(len(j.tokens) for j in chunk)
        cache = mask = position_ids = None
        if ctx_max:
            cache = self._assemble(chunk, ctx_max)
            if any(j.ctx_len != ctx_max for j in chunk):
                mask = torch.zeros((len(chunk), ctx_max + width), dtype=torch.long)
                position_ids = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, j in enumerate(chunk):
                    mask[i, : j.ctx_len] = 1
                    mask[i, ctx_max: ctx_max + len(j.tokens)] = 1
                    position_ids[i] = torch.arange(j.ctx_len, j.ctx_len + width)
        logits, new_cache = self._forward([j.tokens for j in chunk], cache, keep,
                                          want_cache=want, attention_mask=mask,
                                          position_ids=position_ids)
        logprobs = self._log_softmax(logits)
        index = {t: k for k, t in enumerate(keep)}
        segments: list[Segment | None] = []
        for i, j in enumerate(chunk):
            self._serve(logprobs[i], index, j.ctx_len, len(j.tokens), j.req_ids, reqs,
                        out_lp, out_gr)
            if j.node is None:
                segments.append(None)
                continue
            segments.append([
                (layer.keys[i, :, ctx_max: ctx_max + len(j.tokens)].clone(),
                 layer.values[i, :, ctx_max: ctx_max + len(j.tokens)].clone())
                for layer in new_cache.layers])
        return segments

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


def _needed(job: Job, reqs: Sequence[ScoreRequest]) -> set[int]:
    """Row positions of ``job`` whose logits some request scores."""
    out: set[int] = set()
    base, length = job.ctx_len, len(job.tokens)
    for r in job.req_ids:
        lo = max(reqs[r].first_scored, base)
        hi = min(reqs[r].n_inputs, base + length)
        out.update(range(lo - base, hi - base))
    return out
