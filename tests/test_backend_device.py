"""The hf scorer's device-side path, proven on CPU tensors.

* only the scored tokens' values leave the device (no full-vocabulary copy to the host);
* gathering the scored rows before the log-softmax gives the full-vocabulary path's values bit
  for bit, in float32 and bfloat16, whatever the block size;
* bfloat16/float16 models give lm-eval's own loglikelihoods (summed in the model's dtype) with
  ``prefix_sharing=false``, rolling windows included;
* the backend's sum travels in ``TokenScores.total`` and the coordinator's scoring uses it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import answers

from evalfleet.inference.backends import hf_score
from evalfleet.inference.backends.base import TokenScores
from evalfleet.inference.backends.hf import HFBackend
from evalfleet.inference.backends.hf_text import make_score_request


def _backend(model_dir: Path, batch_size: int | str = 4, **kw) -> HFBackend:
    return HFBackend.from_model_args({"pretrained": str(model_dir), "device": "cpu", **kw},
                                     batch_size=batch_size)


def _arc_requests(data_dir: Path, n_docs: int) -> list[tuple[str, str]]:
    path = data_dir / "allenai/ai2_arc/ARC-Easy/test.jsonl"
    docs = [json.loads(x) for x in path.read_text().splitlines()[:n_docs]]
    return [(f"Question: {d['question']}\nAnswer:", f" {c}")
            for d in docs for c in d["choices"]["text"]]


def _mmlu_requests(data_dir: Path, n_docs: int, n_shots: int) -> list[tuple[str, str]]:
    base = data_dir / "cais/mmlu/anatomy"
    shots = [json.loads(x) for x in (base / "dev.jsonl").read_text().splitlines()[:n_shots]]
    docs = [json.loads(x) for x in (base / "test.jsonl").read_text().splitlines()[:n_docs]]

    def block(d: dict) -> str:
        opts = "".join(f"\n{L}. {c}" for L, c in zip("ABCD", d["choices"], strict=True))
        return f"{d['question'].strip()}{opts}\nAnswer:"

    head = "".join(f"{block(s)} {'ABCD'[s['answer']]}\n\n" for s in shots)
    return [(head + block(d), f" {L}") for d in docs for L in "ABCD"]


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    """One tiny-model backend per dtype (batch size 4, lm-eval's batching), loaded once."""
    cache: dict[str, HFBackend] = {}

    def get(dtype: str) -> HFBackend:
        if dtype not in cache:
            cache[dtype] = _backend(tiny_model_dir, 4, dtype=dtype, prefix_sharing=False)
        return cache[dtype]
    return get


@pytest.fixture(scope="module")
def short_requests(data_dir) -> list[tuple[str, str]]:
    """Multi-token continuations of short contexts (cheap in 16-bit on a CPU)."""
    return _arc_requests(data_dir, 4) + [("Paris is the capital of", " France"),
                                         ("", "Hello world, this is a test.")]


@pytest.fixture(scope="module")
def requests_(data_dir, short_requests) -> list[tuple[str, str]]:
    return _mmlu_requests(data_dir, 2, 2) + short_requests


class HostCopies:
    """Records every tensor that a device-to-host call (``.cpu()``, ``.to(cpu)``, ``.numpy()``,
    ``.tolist()``, ``.item()``, ``float()``) is made on while active."""

    METHODS = ("cpu", "to", "numpy", "tolist", "item", "__float__")

    def __init__(self) -> None:
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    @staticmethod
    def _to_cpu(args, kwargs) -> bool:
        for a in (*args, kwargs.get("device")):
            if isinstance(a, torch.device | str) and torch.device(a).type == "cpu":
                return True
        return False

    @contextlib.contextmanager
    def watch(self):
        originals = {m: getattr(torch.Tensor, m) for m in self.METHODS}

        def wrap(name):
            real = originals[name]

            def recorded(t, *args, **kwargs):
                if name != "to" or self._to_cpu(args, kwargs):
                    self.shapes.append((name, tuple(t.shape)))
                return real(t, *args, **kwargs)
            return recorded

        try:
            for m in self.METHODS:
                setattr(torch.Tensor, m, wrap(m))
            yield self
        finally:
            for m, real in originals.items():
                setattr(torch.Tensor, m, real)

    def largest(self) -> int:
        return max((int(np.prod(s)) for _, s in self.shapes), default=0)


def test_the_instrument_sees_a_full_vocabulary_copy():
    copies = HostCopies()
    with copies.watch():
        torch.zeros(2, 3, 49152).cpu()
        torch.zeros(5).to("cpu")
        torch.zeros(5).to(torch.float64)  # a dtype conversion is no host copy
    assert copies.shapes == [("cpu", (2, 3, 49152)), ("to", (5,))]


@pytest.mark.parametrize("shared", [False, True])
def test_only_scored_values_cross_to_the_host(backends, requests_, shared):
    be = backends("float32")
    vocab = be.model.get_output_embeddings().weight.shape[0]
    reqs = [make_score_request(*be.tok.encode_request(c, x), be.max_length) for c, x in requests_]
    with torch.inference_mode():
        plan = be.scorer.plan(reqs, lambda _: 8, shared=shared)
        copies = HostCopies()
        with copies.watch():
            scores = be.scorer.run(plan, reqs)
    assert plan.n_scored == sum(len(s.logprobs) for s in scores)
    # the flat output buffers (one value per scored token) are the largest things copied
    assert ("cpu", (plan.n_scored,)) in copies.shapes
    assert copies.largest() == plan.n_scored < vocab
    assert not any(vocab in shape for _, shape in copies.shapes)


def _full_vocab_reference(scorer, plan, reqs) -> np.ndarray:
    """The old path for a plan without sharing: log-softmax of the whole logits tensor, then
    per request the gather of its scored tokens."""
    out = np.zeros(plan.n_scored, dtype=np.float32)
    for ch in plan.chunks:
        logits = scorer.model(torch.from_numpy(ch.ids)).logits
        lsm = F.log_softmax(logits, dim=-1, dtype=scorer.softmax_dtype)
        flat = lsm.reshape(-1, lsm.shape[-1])
        rows = torch.from_numpy(ch.flat_pos[ch.score_pos])
        out[ch.score_slot] = flat[rows, torch.from_numpy(ch.score_tok)].float().numpy()
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gathered_rows_equal_the_full_vocabulary_log_softmax(backends, requests_, short_requests,
                                                             dtype, monkeypatch):
    be = backends(dtype)
    pairs = requests_ if dtype == "float32" else short_requests
    reqs = [make_score_request(*be.tok.encode_request(c, x), be.max_length) for c, x in pairs]
    with torch.inference_mode():
        plan = be.scorer.plan(reqs, lambda _: 8, shared=False)
        ours = np.concatenate([s.logprobs for s in be.scorer.run(plan, reqs)])
        ref = _full_vocab_reference(be.scorer, plan, reqs)
        np.testing.assert_array_equal(ours, ref)
        # blocks of 3 full-vocabulary rows: same values, same greedy flags
        monkeypatch.setattr(hf_score, "LOG_SOFTMAX_BLOCK_BYTES", 3 * 49152 * 4)
        blocked = be.scorer.run(plan, reqs)
    np.testing.assert_array_equal(np.concatenate([s.logprobs for s in blocked]), ours)


@pytest.mark.reference
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_sums_equal_lm_eval_without_sharing(tiny_model_dir, backends,
                                                           short_requests, dtype):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    ours = answers(backends(dtype).loglikelihood(short_requests))
    ref = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4,
               dtype=dtype).loglikelihood(
        [Instance("loglikelihood", {}, r, i) for i, r in enumerate(short_requests)])
    assert [(s.total, s.is_greedy) for s in ours] == [(ll, g) for ll, g in ref]
    assert all(s.backend_total is not None for s in ours)
    # summing the same values in float64 would not reproduce lm-eval
    assert any(abs(float(s.logprobs.astype(np.float64).sum()) - ll) > 1e-3
               for s, (ll, _) in zip(ours, ref, strict=True))


@pytest.mark.reference
def test_half_precision_rolling_equals_lm_eval_without_sharing(tiny_model_dir, short_requests):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    texts = ["word " * 100, short_requests[0][0], "short", short_requests[-3][0] * 4]
    ours = answers(_backend(tiny_model_dir, 3, dtype="bfloat16", max_length=32,
                            prefix_sharing=False).loglikelihood_rolling(texts))
    ref = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=3, dtype="bfloat16",
               max_length=32).loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    assert [s.total for s in ours] == list(ref)


def test_batched_encoding_equals_lm_evals_one_by_one(backends, requests_):
    tok = backends("float32").tok
    bos = tok.tok.decode(tok.prefix_token_id)
    pairs = [*requests_, ("The cat sat   ", "on the mat"), ("   ", " x"), ("", "Hello"),
             (bos + "Question: 2+2?", " 4"), ("Caf\u00e9 \u00fcber", " na\u00efve"),
             requests_[0]]
    assert tok.encode_requests(pairs) == [tok.encode_request(c, x) for c, x in pairs]
    texts = [c + x for c, x in pairs]
    assert tok.encode_many(texts) == [tok.encode(t) for t in texts]


def test_float32_scores_leave_the_sum_to_the_coordinator(backends):
    [scores] = answers(backends("float32").loglikelihood([("Paris is the capital of",
                                                             " France")]))
    assert scores.backend_total is None
    assert scores.total == float(scores.logprobs.astype(np.float64).sum())


def test_the_coordinator_uses_the_backend_total():
    from evalfleet import scoring
    from evalfleet.inference.server import _token_scores_pb
    from evalfleet.server.evaluator import _decode_scores

    lp = np.array([-1.5, -2.25, -0.125], dtype=np.float32)
    blobs = [_token_scores_pb("a", TokenScores(lp, np.ones(3, bool), backend_total=-3.875)),
             _token_scores_pb("b", TokenScores(lp[:2], np.zeros(2, bool)))]
    assert blobs[0].HasField("total") and not blobs[1].HasField("total")
    values, greedy, offsets, totals = _decode_scores([b.SerializeToString() for b in blobs])
    ll, is_greedy = scoring.request_loglikelihoods(values, greedy, offsets, totals)
    assert ll.tolist() == [-3.875, -3.75] and is_greedy.tolist() == [True, False]
    # no answer with a total: plain float64 sums
    values, greedy, offsets, totals = _decode_scores([blobs[1].SerializeToString()])
    assert totals is None
    assert scoring.request_loglikelihoods(values, greedy, offsets, totals)[0].tolist() == [-3.75]


def test_the_backend_total_survives_the_wire_scan():
    """The coordinator stores answer bytes as split from the response (a Numba scan over the
    protobuf wire format): the ``total`` (field 5, a double) passes through it untouched."""
    from evalfleet.inference.server import _token_scores_pb
    from evalfleet.server.batching import kind_queues
    from evalfleet.server.evaluator import _decode_scores
    from evalfleet.server.wire import split_response
    from evalfleet.server.workers import WorkItem
    from evalfleet.v1 import inference_pb2 as pb

    lp = np.array([-1.5, -2.25], dtype=np.float32)
    results = [_token_scores_pb("a", TokenScores(lp, np.ones(2, bool), backend_total=-3.7)),
               _token_scores_pb("b", TokenScores(lp, np.ones(2, bool)))]
    raw = pb.LoglikelihoodResponse(results=results).SerializeToString()
    (queue,) = kind_queues([WorkItem(rid, "loglikelihood", ("ctx", " x")) for rid in "ab"])
    batch = queue.take(2)
    split = split_response(raw, "loglikelihood", queue.expected, batch.index_array())
    assert split.answered.tolist() == [0, 1] and not split.errors
    _, _, _, totals = _decode_scores(split.answers)
    assert totals[0] == -3.7 and np.isnan(totals[1])


def test_planning_runs_outside_the_model_lock(backends, short_requests):
    """A batch is planned (host work) without the model lock, so the next batch plans while
    one computes; only the forwards hold it. Concurrent batches answer as sequential ones."""
    import asyncio

    be = backends("float32")
    held: dict[str, list[bool]] = {"plan": [], "run": []}
    real_plan, real_run = be.scorer.plan, be.scorer.run

    def plan(*args, **kwargs):
        held["plan"].append(be._lock._is_owned())
        return real_plan(*args, **kwargs)

    def run(*args, **kwargs):
        held["run"].append(be._lock._is_owned())
        return real_run(*args, **kwargs)

    be.scorer.plan, be.scorer.run = plan, run
    try:
        alone = [answers(be.loglikelihood(short_requests[:3])),
                 answers(be.loglikelihood(short_requests[3:]))]

        async def together():
            return await asyncio.gather(be.loglikelihood(short_requests[:3]),
                                        be.loglikelihood(short_requests[3:]),
                                        be.loglikelihood_rolling([short_requests[0][0]]))

        both = asyncio.run(together())
    finally:
        del be.scorer.plan, be.scorer.run
    assert held["plan"] == [False] * 5 and held["run"] == [True] * 5
    for a, b in zip(alone, both[:2], strict=True):
        assert [s.logprobs.tolist() for s in a] == [s.logprobs.tolist() for s in b.results]
    assert both[2].results[0].logprobs.size > 0 and both[2].cost.positions_computed > 0
