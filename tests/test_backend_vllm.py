"""The ``vllm`` backend: what can be checked without a GPU, and GPU checks that skip without one.

Without a GPU: argument validation (INVALID_ARGUMENT naming the field on any machine), and the
parsing of ``prompt_logprobs`` and of generation settings against lm-eval 0.4.13's own
``VLLM._parse_logprobs`` and ``VLLM.modify_gen_kwargs`` (their source is read from the installed
lm-eval and compiled alone, since importing lm-eval's vllm module needs vllm itself), on data
shaped as vLLM returns it. With CUDA and vllm: the backend against the hf backend on the real
model (the same check bench/gpu_check.sh runs at a larger scale).
"""

from __future__ import annotations
import __future__

import ast
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalfleet.inference.backends.base import BackendArgumentError, GenerationParams
from evalfleet.inference.backends.vllm import VLLMBackend, parse_prompt_logprobs
from evalfleet.inference.backends.vllm_args import parse_vllm_args


def lmeval_vllm_method(name: str):
    """A static method of lm-eval's ``VLLM``, compiled from its installed source."""
    import lm_eval
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    path = Path(lm_eval.__file__).parent / "models" / "vllm_causallms.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)
    fn.decorator_list = []
    code = compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    namespace: dict[str, Any] = {"normalize_gen_kwargs": normalize_gen_kwargs,
                                 "handle_stop_sequences": handle_stop_sequences}
    exec(code, namespace)  # noqa: S102 - lm-eval's own source, installed with the test extra
    return namespace[name]


@dataclass
class Logprob:
    """vLLM's ``vllm.logprobs.Logprob`` shape."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class RequestOutput:
    """The part of vLLM's ``RequestOutput`` lm-eval reads."""

    def __init__(self, prompt_logprobs):
        self.prompt_logprobs = prompt_logprobs


def _shaped_like_vllm(rng: random.Random, tokens: list[int]) -> list:
    """prompt_logprobs as vLLM returns them with prompt_logprobs=1: None first, then per
    position the prompt token's Logprob and the top-1 token's (one entry when they agree)."""
    out: list = [None]
    for token in tokens[1:]:
        top = token if rng.random() < 0.5 else rng.randrange(1000)
        top_lp = -rng.random() * 0.5
        entry = {token: Logprob(top_lp if top == token else top_lp - 0.1 - rng.random() * 5,
                                1 if top == token else rng.randrange(2, 50))}
        entry.setdefault(top, Logprob(top_lp, 1))
        out.append(entry)
    return out


def test_prompt_logprobs_parse_as_lm_eval_parses_them():
    lm_parse = lmeval_vllm_method("_parse_logprobs")
    rng = random.Random(0)
    for _ in range(200):
        tokens = [rng.randrange(1000) for _ in range(rng.randrange(2, 30))]
        ctxlen = rng.randrange(1, len(tokens))
        prompt_logprobs = _shaped_like_vllm(rng, tokens)
        ours = parse_prompt_logprobs(tokens, prompt_logprobs, ctxlen)
        total, greedy = lm_parse(tokens, RequestOutput(prompt_logprobs), ctxlen)
        assert ours.total == pytest.approx(total, abs=1e-5)
        assert ours.is_greedy == greedy
        assert len(ours.logprobs) == len(tokens) - ctxlen
    # bare floats (vLLM before its Logprob objects) parse too
    plain = [None, {5: -0.5, 7: -0.1}, {9: -0.2}]
    scores = parse_prompt_logprobs([1, 5, 9], plain, 1)
    assert scores.logprobs.tolist() == pytest.approx([-0.5, -0.2])
    assert scores.greedy.tolist() == [False, True]


@pytest.mark.parametrize("gen_kwargs", [
    {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0},
    {"until": ["\n\n"], "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 3,
     "max_gen_toks": 64},
    {"until": ["<|im_end|>"], "max_gen_toks": 16},
])
def test_sampling_settings_are_lm_evals(gen_kwargs, tiny_model_dir):
    from transformers import AutoTokenizer

    from evalfleet.inference.backends.base import GenerationRequest

    modify = lmeval_vllm_method("modify_gen_kwargs")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    backend = VLLMBackend.__new__(VLLMBackend)  # no engine: sampling settings only
    from evalfleet.inference.backends.hf_text import HFTokenizer

    backend.tok = HFTokenizer(tok, add_bos_token=None, prefix_token_id=None)
    params = GenerationParams.from_gen_kwargs(gen_kwargs)
    kwargs, until, eos = backend.sampling_kwargs(GenerationRequest("x", params))
    eos_text = tok.decode(tok.eos_token_id)
    expected_kwargs, expected_until, expected_max = modify(dict(gen_kwargs), eos=eos_text,
                                                           default_max_gen_toks=256)
    if "temperature" not in expected_kwargs:
        # lm-eval leaves temperature unset when a task gives neither it nor do_sample, so
        # vLLM samples at its default temperature 1.0; evalfleet decodes greedily, as the
        # task's (absent) do_sample means and as lm-eval's hf backend does.
        expected_kwargs["temperature"] = 0.0
    assert eos == eos_text
    assert until == expected_until
    assert params.max_gen_toks == expected_max
    assert kwargs == pytest.approx(expected_kwargs)


def test_arguments_are_validated_naming_the_field():
    with pytest.raises(BackendArgumentError, match="model_args.pretrained"):
        parse_vllm_args({})
    with pytest.raises(BackendArgumentError, match="model_args.max_model_len: give max_length"):
        parse_vllm_args({"pretrained": "m", "max_length": 512, "max_model_len": 512})
    with pytest.raises(BackendArgumentError, match="model_args.dtype"):
        parse_vllm_args({"pretrained": "m", "dtype": "int3"})
    with pytest.raises(BackendArgumentError, match="model_args.gpu_memory_utilization"):
        parse_vllm_args({"pretrained": "m", "gpu_memory_utilization": 1.5})
    with pytest.raises(BackendArgumentError, match="model_args.tensor_parallel_size"):
        parse_vllm_args({"pretrained": "m", "tensor_parallel_size": 0})
    with pytest.raises(BackendArgumentError, match="model_args.enable_thinking"):
        parse_vllm_args({"pretrained": "m", "enable_thinking": True})
    with pytest.raises(BackendArgumentError, match="model_args.truncation_side"):
        parse_vllm_args({"pretrained": "m", "truncation_side": "middle"})
    with pytest.raises(BackendArgumentError, match="model_args.max_gen_toks"):
        parse_vllm_args({"pretrained": "m", "max_gen_toks": 512})
    args = parse_vllm_args({"pretrained": "m", "max_model_len": "4096", "dtype": "bfloat16",
                            "tensor_parallel_size": "2", "gpu_memory_utilization": "0.8",
                            "enforce_eager": "true", "seed": 7, "device": "cuda:0"}, 16)
    kwargs = args.llm_kwargs()
    assert kwargs["max_model_len"] == 4096 and kwargs["tensor_parallel_size"] == 2
    assert kwargs["gpu_memory_utilization"] == 0.8 and kwargs["enforce_eager"] is True
    assert kwargs["dtype"] == "bfloat16" and kwargs["seed"] == 7 and "device" not in kwargs
    assert args.batch_size == 16


def test_data_parallel_is_one_worker_per_gpu_group():
    with pytest.raises(BackendArgumentError, match="data_parallel_size.*--workers"):
        VLLMBackend.from_model_args({"pretrained": "m", "data_parallel_size": 2})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_without_vllm_the_backend_says_how_to_install_it():
    from evalfleet.common.errors import InvalidArgumentError
    from evalfleet.inference.backends import get_backend

    with pytest.raises(InvalidArgumentError, match=r"evalfleet\[vllm\]"):
        get_backend("vllm").from_model_args({"pretrained": "m"})


def _gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(not _gpu(), reason="needs CUDA and vllm (a GPU machine)")
def test_vllm_matches_hf_on_the_real_model(real_model_dir, background_loop, data_dir):
    from conftest import run_evaluation

    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator
    from evalfleet.v1 import coordinator_pb2 as cpb

    runs = {}
    for name, args in (("hf", {"pretrained": str(real_model_dir), "dtype": "float32"}),
                       ("vllm", {"pretrained": str(real_model_dir), "dtype": "float32",
                                 "gpu_memory_utilization": 0.3, "max_model_len": 2048})):
        backend = load_backend(name, args, batch_size="auto" if name == "vllm" else 16)
        worker = background_loop.run(start_worker(backend))
        coord, _ = background_loop.run(start_coordinator(workers=[worker.address],
                                                         data_dir=data_dir))
        try:
            final, _, results, samples = run_evaluation(coord.address, cpb.EvaluationSpec(
                model=name, tasks=["arc_easy"], limit=100, num_fewshot=0, log_samples=True,
                bootstrap_iters=0))
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
            runs[name] = {s["doc_id"]: s for s in samples["arc_easy"]}
        finally:
            background_loop.run(coord.stop(0.5))
            background_loop.run(worker.stop(0.5))
    diffs = [abs(float(a[0][0]) - float(b[0][0]))
             for d in runs["hf"] for a, b in zip(runs["hf"][d]["resps"], runs["vllm"][d]["resps"],
                                                 strict=True)]
    same_acc = np.mean([runs["hf"][d]["acc"] == runs["vllm"][d]["acc"] for d in runs["hf"]])
    assert max(diffs) < 5e-3 and same_acc >= 0.97, (max(diffs), same_acc)
