"""The ``vllm`` backend: a GPU worker holding ``vllm.LLM``, as lm-eval 0.4.13's ``VLLM``.

* loglikelihood: token-id prompts (context + continuation, left-truncated to
  ``max_length - 1``) with ``SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1,
  detokenize=False)``; each continuation token's logprob is read from ``prompt_logprobs`` and it
  is greedy when it is the entry with the largest logprob (:func:`parse_prompt_logprobs`, lm-eval's
  ``_parse_logprobs`` per token);
* loglikelihood_rolling: lm-eval's rolling windows of ``max_length - 2`` tokens, scored alike;
* generate_until: ``SamplingParams(max_tokens, stop=until + [eos], skip_special_tokens=False,
  spaces_between_special_tokens=False, temperature, ...)``, the context left-truncated to
  ``max_length - max_gen_toks``, the text cut at the stop sequences afterwards.

A whole batch goes to ``LLM.generate`` at once (vLLM schedules it; lm-eval's
``batch_size=auto``), one batch at a time while the next is tokenized. ``vllm`` is an optional
extra (``pip install 'evalfleet[vllm]'``), imported only when this backend is loaded.
Data parallelism is evalfleet's own: one worker per GPU group, all given to the coordinator.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.base import (
    Answers,
    Backend,
    BackendArgumentError,
    Capabilities,
    ChatRendering,
    ChatTemplateSupport,
    Conversation,
    Cost,
    GenerationRequest,
    ItemError,
    ModelInfo,
    TokenScores,
)
from evalfleet.inference.backends.chat_template import render_conversations, select_template
from evalfleet.inference.backends.fingerprint import (
    fingerprint,
    model_files,
    resolve_local_dir,
    tokenizer_files,
)
from evalfleet.inference.backends.hf_text import HFTokenizer
from evalfleet.inference.backends.loading import library_versions
from evalfleet.inference.backends.reasoning import (
    GeneratedText,
    local_generation,
    reasoning_fingerprint,
)
from evalfleet.inference.backends.threaded import OneAtATime
from evalfleet.inference.backends.vllm_args import VLLMArgs, parse_vllm_args
from evalfleet.inference.backends.windows import rolling_windows

log = get_logger("backend.vllm")

DATA_PARALLEL_REMEDY = (
    "evalfleet runs data parallel as one worker per GPU group: start data_parallel_size "
    "workers (`CUDA_VISIBLE_DEVICES=i evalfleet serve worker --backend vllm ...`, each with "
    "tensor_parallel_size GPUs) and give the coordinator all of them (--workers a,b,...); "
    "it balances batches across them")


def _logprob_value(entry: Any) -> float:
    """vLLM's ``Logprob`` object (or a bare float from old releases) as a float."""
    return float(getattr(entry, "logprob", entry))


def parse_prompt_logprobs(tokens: Sequence[int], prompt_logprobs: Sequence[Any],
                          ctxlen: int) -> TokenScores:
    """Per continuation token: its logprob and whether it is the top entry (lm-eval's
    ``VLLM._parse_logprobs``, which sums these and ands the greedy flags).

    ``prompt_logprobs[i]`` maps token ids to logprobs at prompt position ``i`` (None for the
    first); it holds the prompt's own token and the top-1 alternative.
    """
    values, greedy = [], []
    for token, entry in zip(tokens[ctxlen:], prompt_logprobs[ctxlen:], strict=True):
        table = {tid: _logprob_value(lp) for tid, lp in entry.items()}
        values.append(table[token])
        greedy.append(max(table, key=table.get) == token)
    return TokenScores(np.asarray(values, np.float32), np.asarray(greedy, bool))


class VLLMBackend(Backend):
    """``vllm.LLM`` with lm-eval's VLLM tokenization, truncation and sampling."""

    name: ClassVar[str] = "vllm"

    def __init__(self, args: VLLMArgs, llm: Any, tokenizer: Any, fingerprint_: str) -> None:
        self.args = args
        self.llm = llm
        self.tok = HFTokenizer(tokenizer, add_bos_token=args.add_bos_token,
                               prefix_token_id=args.prefix_token_id)
        self.max_length = args.max_length or int(llm.llm_engine.model_config.max_model_len)
        self._fingerprint = fingerprint_
        self._batches = OneAtATime()

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = "auto") -> VLLMBackend:
        args = parse_vllm_args(model_args, batch_size)
        if args.data_parallel_size > 1:
            raise BackendArgumentError("data_parallel_size", DATA_PARALLEL_REMEDY)
        try:
            import vllm
        except ImportError as exc:
            raise InvalidArgumentError(
                f"backend 'vllm' needs the vllm package ({exc}): pip install 'evalfleet[vllm]' "
                "on a machine with a CUDA GPU") from exc
        kwargs = {k: v for k, v in args.llm_kwargs().items() if v is not None}
        try:
            llm = vllm.LLM(**kwargs)
        except (TypeError, ValueError) as exc:
            raise BackendArgumentError("pretrained", f"vllm.LLM refused the arguments: {exc}"
                                       ) from exc
        tokenizer = llm.get_tokenizer()
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        return cls(args, llm, tokenizer, reasoning_fingerprint(cls._fingerprint_files(args),
                                                               args.think_end_token))

    @staticmethod
    def _fingerprint_files(args: VLLMArgs) -> str:
        revision = args.revision or "main"
        model_dir = resolve_local_dir(args.pretrained, revision)
        files = model_files(model_dir, None) if model_dir is not None else []
        tok_dir = resolve_local_dir(args.tokenizer, revision) if args.tokenizer else model_dir
        if tok_dir is not None:
            files += tokenizer_files(tok_dir)
        return fingerprint(files, f"{args.pretrained}@{revision}")

    def model_info(self) -> ModelInfo:
        tok = self.tok.tok
        config = self.llm.llm_engine.model_config
        return ModelInfo(
            backend=self.name, model_name=self.args.pretrained,
            revision=self.args.revision or "main",
            tokenizer=self.args.tokenizer or self.args.pretrained, max_length=self.max_length,
            fingerprint=self._fingerprint, dtype=str(config.dtype).removeprefix("torch."),
            device=f"cuda (tensor_parallel_size={self.args.tensor_parallel_size})",
            num_parameters=0, eot_token_id=self.tok.eot_token_id, bos_token=tok.bos_token,
            eos_token=tok.eos_token, pad_token=tok.pad_token,
            capabilities=Capabilities(
                loglikelihood=not self.args.enable_thinking,
                loglikelihood_rolling=not self.args.enable_thinking, generate_until=True,
                logprobs_unavailable_reason=(
                    "enable_thinking=True is not compatible with loglikelihood tasks"
                    if self.args.enable_thinking else ""),
                logprobs_remedy="run generative tasks only, or drop enable_thinking"
                if self.args.enable_thinking else "",
                chat_template=(ChatTemplateSupport.RENDER if tok.chat_template
                               else ChatTemplateSupport.NONE),
                max_context_tokens=self.max_length, max_concurrent_batches=1),
            library_versions=library_versions("vllm", "torch", "transformers", "evalfleet"),
        )

    # ------------------------------------------------------------------ scoring
    def _window(self, ctx: list[int], cont: list[int]) -> tuple[list[int], int] | ItemError:
        limit = self.max_length - 1  # vLLM needs room for one generated token
        ctxlen = len(ctx) - max(0, len(ctx) + len(cont) - limit)
        if ctxlen <= 0:
            return ItemError(f"continuation of {len(cont)} tokens leaves no context within "
                             f"max_length {self.max_length}")
        return (ctx + cont)[-limit:], ctxlen

    def _score(self, windows: Sequence[tuple[list[int], int] | ItemError | None]
               ) -> list[TokenScores | ItemError]:
        from vllm import SamplingParams, TokensPrompt

        todo = [i for i, w in enumerate(windows) if isinstance(w, tuple)]
        todo.sort(key=lambda i: (-len(windows[i][0]), tuple(windows[i][0])))  # type: ignore
        empty = TokenScores(np.zeros(0, np.float32), np.zeros(0, bool))
        results: list[TokenScores | ItemError] = [
            w if isinstance(w, ItemError) else empty for w in windows]  # type: ignore[misc]
        if not todo:
            return results
        params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1,
                                detokenize=False)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=windows[i][0]) for i in todo],  # type: ignore
            sampling_params=params, use_tqdm=False)
        for i, output in zip(todo, outputs, strict=True):
            inp, ctxlen = windows[i]  # type: ignore[misc]
            results[i] = parse_prompt_logprobs(inp, output.prompt_logprobs, ctxlen)
        return results

    def _prepare_pairs(self, requests: Sequence[tuple[str, str]]) -> list:
        out = []
        for context, continuation in requests:
            ctx, cont = self.tok.encode_request(context, continuation)
            out.append(self._window(ctx, cont) if cont else None)
        return out

    async def _run(self, prepare, compute) -> Answers:
        results, seconds = await self._batches.run(prepare, compute)
        return Answers(results, Cost(compute_seconds=seconds))

    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        if self.args.enable_thinking:
            return Answers([ItemError("enable_thinking=True is not compatible with "
                                      "loglikelihood tasks")] * len(requests))
        return await self._run(lambda: self._prepare_pairs(requests), self._score)

    def _prepare_rolling(self, texts: Sequence[str]) -> tuple[list, list[int]]:
        windows, counts = [], []
        for text in texts:
            pairs = rolling_windows(self.tok.encode(text), self.tok.prefix_token_id,
                                    self.max_length - 2)
            counts.append(len(pairs))
            windows.extend(self._window(ctx, cont) for ctx, cont in pairs)
        return windows, counts

    def _score_rolling(self, prepared: tuple[list, list[int]]) -> list[TokenScores | ItemError]:
        windows, counts = prepared
        scores = self._score(windows)
        out: list[TokenScores | ItemError] = []
        pos = 0
        for n in counts:
            parts = scores[pos:pos + n]
            pos += n
            error = next((p for p in parts if isinstance(p, ItemError)), None)
            out.append(error or TokenScores(
                np.concatenate([p.logprobs for p in parts]) if parts else np.zeros(0, np.float32),
                np.concatenate([p.greedy for p in parts]) if parts else np.zeros(0, bool)))
        return out

    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        return await self._run(lambda: self._prepare_rolling(texts), self._score_rolling)

    # ------------------------------------------------------------------ generation
    def sampling_kwargs(self, request: GenerationRequest
                        ) -> tuple[dict[str, Any], list[str], str | None]:
        """lm-eval's ``VLLM.modify_gen_kwargs``: SamplingParams keywords, the stops (until and
        the EOS text) and the EOS text."""
        params = request.params
        eos = self.tok.decode([self.tok.eot_token_id], skip_special_tokens=False) \
            or self.tok.tok.eos_token
        until = list(params.until) + ([eos] if eos is not None and eos not in params.until
                                      else [])
        kwargs: dict[str, Any] = {"skip_special_tokens": False,
                                  "spaces_between_special_tokens": False,
                                  "temperature": params.temperature}
        for key in ("top_p", "top_k", "seed"):
            value = getattr(params, key)
            if value is not None:
                kwargs[key] = value
        return kwargs, until, eos

    def _generate(self, requests: Sequence[GenerationRequest]) -> list[str | ItemError]:
        from vllm import SamplingParams, TokensPrompt

        results: list[str | ItemError] = [""] * len(requests)
        prompts, sampling, index, stops = [], [], [], []
        for i, request in enumerate(requests):
            if not isinstance(request.context, str):
                results[i] = ItemError("the vllm backend takes prompt text; chat templates are "
                                       "rendered by ApplyChatTemplate")
                continue
            max_gen = request.params.max_gen_toks
            if max_gen >= self.max_length:
                results[i] = ItemError(f"gen_kwargs.max_gen_toks {max_gen} must be below "
                                       f"max_length {self.max_length}")
                continue
            ids = self.tok.encode(request.context)
            ids = ids[-(self.max_length - max_gen):] if len(ids) + max_gen > self.max_length \
                else ids
            kwargs, until, eos = self.sampling_kwargs(request)
            # with a reasoning model only EOS stops vLLM; task stops cut the text afterwards
            stop = [s for s in until if s == eos] if self.args.think_end_token else until
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            sampling.append(SamplingParams(max_tokens=max_gen, stop=stop, **kwargs))
            index.append(i)
            stops.append(until)
        if prompts:
            outputs = self.llm.generate(prompts, sampling_params=sampling, use_tqdm=False)
            for i, output, until in zip(index, outputs, stops, strict=True):
                results[i] = vllm_answer(output, until, self.args.think_end_token, self.tok)
        return results

    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        return await self._run(lambda: None, lambda _: self._generate(requests))

    # ------------------------------------------------------------------ chat templates
    async def apply_chat_template(self, conversations: Sequence[Conversation],
                                  template_name: str | None = None) -> ChatRendering:
        tok = self.tok.tok
        template = select_template(tok.chat_template, template_name)
        extra = dict(self.args.chat_template_args)
        if self.args.enable_thinking is not None:
            extra["enable_thinking"] = self.args.enable_thinking
        prompts = await asyncio.to_thread(render_conversations, tok, conversations, extra)
        return ChatRendering(prompts, template, hashlib.sha256(template.encode()).hexdigest())


def vllm_answer(output: Any, until: Sequence[str], think_end_token: str | None,
                tok: Any) -> GeneratedText:
    """One vLLM ``RequestOutput`` as an answer: thinking split off, then the task's stop
    sequences; ``finish_reason`` "length" is the length limit; tokens counted from its ids."""
    completion = output.outputs[0]
    return local_generation(
        completion.text, until=until, think_end_token=think_end_token,
        hit_length_limit=completion.finish_reason == "length",
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(completion.token_ids or ()),
        count_tokens=lambda text: len(tok.encode(text, add_special_tokens=False)))
