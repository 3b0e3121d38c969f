"""The hf backend against lm-eval 0.4.13's own HFLM (tiny model; one small real-model check)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import answers

from evalfleet.inference.backends import UnknownBackendError, get_backend
from evalfleet.inference.backends.base import (
    BackendArgumentError,
    GenerationParams,
    GenerationRequest,
)
from evalfleet.inference.backends.hf import HFBackend
from evalfleet.inference.backends.windows import rolling_windows

pytestmark = pytest.mark.reference


def _hflm(model_dir: Path, batch_size: int = 4, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), device="cpu", batch_size=batch_size, **kw)


def _instances(kind: str, args_list: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, args, i) for i, args in enumerate(args_list)]


def _arc_requests(data_dir: Path, n_docs: int) -> list[tuple[str, str]]:
    path = data_dir / "allenai/ai2_arc/ARC-Easy/test.jsonl"
    docs = [json.loads(line) for line in path.read_text().splitlines()[:n_docs]]
    return [(f"Question: {d['question']}\nAnswer:", f" {c}")
            for d in docs for c in d["choices"]["text"]]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 + 1e-7 * abs(b)


def _backend(model_dir: Path, batch_size: int | str = 4, **kw) -> HFBackend:
    return HFBackend.from_model_args({"pretrained": str(model_dir), "device": "cpu", **kw},
                                     batch_size=batch_size)


@pytest.fixture(scope="module")
def requests_(data_dir) -> list[tuple[str, str]]:
    extra = [("", "Hello world, this is a test."), ("The cat sat   ", "on the mat"),
             ("Paris is the capital of", " France"), ("A", " B"),
             ("Question: 2+2?\nAnswer:", " 4"), ("Question: 2+2?\nAnswer:", " 5")]
    return _arc_requests(data_dir, 6) + extra


@pytest.fixture(scope="module")
def ref_tiny(tiny_model_dir):
    return _hflm(tiny_model_dir)


@pytest.fixture(scope="module")
def ref_tiny_short(tiny_model_dir):
    return _hflm(tiny_model_dir, max_length=32)


def test_registry_resolves_names_and_suggests():
    assert get_backend("hf") is HFBackend
    assert get_backend("hf-auto") is HFBackend
    assert get_backend("huggingface") is HFBackend
    with pytest.raises(UnknownBackendError, match="did you mean 'hf'"):
        get_backend("hff")


@pytest.mark.parametrize(("args", "field"), [
    ({"max_length": "abc"}, "max_length"),
    ({"dtype": "float33"}, "dtype"),
    ({"add_bos_token": "maybe"}, "add_bos_token"),
    ({"prefix_token_id": 1.5}, "prefix_token_id"),
    ({"parallelize": True}, "parallelize"),
    ({"batch_size": "lots"}, "batch_size"),
    ({"forward_cost": -1}, "forward_cost"),
    ({"foo_bar": 1}, "foo_bar"),
    ({"pretrained": "models/no-such-model"}, "pretrained"),
])
def test_bad_model_args_name_the_field(tiny_model_dir, args, field):
    with pytest.raises(BackendArgumentError) as err:
        HFBackend.from_model_args({"pretrained": str(tiny_model_dir), **args})
    assert err.value.field == field


def test_concurrent_calls_are_serialised(tiny_model_dir, requests_):
    be = _backend(tiny_model_dir)

    async def three():
        return await asyncio.gather(*(be.loglikelihood(requests_[:8]) for _ in range(3)))

    runs = [a.results for a in asyncio.run(three())]
    for run in runs[1:]:
        assert [s.total for s in run] == [s.total for s in runs[0]]


def test_missing_pretrained_is_an_argument_error():
    with pytest.raises(BackendArgumentError, match="pretrained"):
        HFBackend.from_model_args({})


def test_gen_kwargs_normalisation():
    p = GenerationParams.from_gen_kwargs({"until": "\n", "max_new_tokens": 5, "max_tokens": 9})
    assert (p.until, p.max_gen_toks, p.do_sample, p.temperature) == (["\n"], 5, False, 0.0)
    p = GenerationParams.from_gen_kwargs({"temperature": 0.7})
    assert p.do_sample and p.temperature == 0.7 and p.max_gen_toks == 256 and p.until == []
    p = GenerationParams.from_gen_kwargs({"do_sample": False, "temperature": 0.7})
    assert not p.do_sample and p.temperature == 0.0


def test_rolling_windows_docstring_example():
    assert rolling_windows(list(range(10)), -1, 4) == [
        ([-1], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]


@pytest.mark.parametrize("prefix_sharing", [False, True])
def test_loglikelihood_matches_lm_eval(tiny_model_dir, ref_tiny, requests_, prefix_sharing):
    ours = answers(_backend(tiny_model_dir, prefix_sharing=prefix_sharing).loglikelihood(
        requests_))
    ref = ref_tiny.loglikelihood(_instances("loglikelihood", requests_))
    assert len(ours) == len(ref)
    for scores, (ll, greedy) in zip(ours, ref, strict=True):
        assert _close(scores.total, ll)
        assert scores.is_greedy == greedy
        assert scores.logprobs.dtype.name == "float32" and scores.greedy.dtype == bool


@pytest.mark.parametrize("prefix_sharing", [False, True])
def test_loglikelihood_left_truncation_matches_lm_eval(tiny_model_dir, ref_tiny_short,
                                                      requests_, prefix_sharing):
    be = _backend(tiny_model_dir, max_length=32, prefix_sharing=prefix_sharing)
    assert be.model_info().max_length == 32
    ours = answers(be.loglikelihood(requests_))
    ref = ref_tiny_short.loglikelihood(_instances("loglikelihood", requests_))
    for scores, (ll, greedy) in zip(ours, ref, strict=True):
        assert _close(scores.total, ll) and scores.is_greedy == greedy


def test_loglikelihood_rolling_matches_lm_eval(tiny_model_dir, ref_tiny_short, requests_):
    texts = ["word " * 100, requests_[0][0] * 3, "short", requests_[5][0]]
    be = _backend(tiny_model_dir, max_length=32)
    ours = answers(be.loglikelihood_rolling(texts))
    ref = ref_tiny_short.loglikelihood_rolling(_instances("loglikelihood_rolling",
                                                          [(t,) for t in texts]))
    for text, scores, ll in zip(texts, ours, ref, strict=True):
        assert len(scores.logprobs) == len(be.tok.encode(text))
        assert _close(scores.total, ll)


def test_generate_until_matches_lm_eval_tiny(tiny_model_dir, ref_tiny_short, requests_):
    contexts = sorted({c for c, _ in requests_ if c})[:5]
    gen_kwargs = {"until": ["\n\n", ":"], "max_gen_toks": 8, "do_sample": False}
    be = _backend(tiny_model_dir, max_length=32)
    ours = answers(be.generate_until([GenerationRequest(c, GenerationParams.from_gen_kwargs(
        gen_kwargs)) for c in contexts]))
    ref = ref_tiny_short.generate_until(_instances("generate_until",
                                                   [(c, gen_kwargs) for c in contexts]))
    assert ours == ref


@pytest.mark.slow
def test_generate_until_matches_lm_eval_real(real_model_dir):
    contexts = ["Question: What is the capital of France?\nAnswer:",
                "The three primary colors are", "1, 2, 3, 4,"]
    gen_kwargs = {"until": ["\n", "."], "max_gen_toks": 12}
    be = _backend(real_model_dir, batch_size=2)
    ours = answers(be.generate_until([GenerationRequest(c, GenerationParams.from_gen_kwargs(
        gen_kwargs)) for c in contexts]))
    ref = _hflm(real_model_dir, batch_size=2).generate_until(
        _instances("generate_until", [(c, gen_kwargs) for c in contexts]))
    assert ours == ref
    assert any(o.strip() for o in ours)


def test_model_info_and_positions(tiny_model_dir):
    be = _backend(tiny_model_dir, prefix_sharing=False)
    info = be.model_info()
    assert info.backend == "hf" and info.max_length == 2048 and info.dtype == "float32"
    assert info.fingerprint.startswith("sha256:") and info.eot_token_id == 2
    assert info.fingerprint == _backend(tiny_model_dir).model_info().fingerprint
    answer = asyncio.run(be.loglikelihood([("Hello there", " friend"), ("Hi", " you")]))
    assert answer.cost.positions_computed == be.positions_computed > 0
