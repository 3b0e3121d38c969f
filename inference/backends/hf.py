"""The Hugging Face transformers backend: reproduces lm-eval 0.4.13 ``--model hf`` numbers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import transformers

from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.base import (
    CANCELLED,
    Answers,
    Backend,
    BackendArgumentError,
    Capabilities,
    ChatRendering,
    ChatTemplateSupport,
    Conversation,
    Cost,
    GenerationParams,
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
from evalfleet.inference.backends.hf_args import HFArgs, parse_hf_args
from evalfleet.inference.backends.hf_generate import generate_batch, generated_answer
from evalfleet.inference.backends.hf_model_kwargs import reject_unused, split_extra
from evalfleet.inference.backends.hf_quant import bnb_config, check_prerequisites
from evalfleet.inference.backends.hf_score import ForwardInterrupted, ScorePlan, Scorer
from evalfleet.inference.backends.hf_text import HFTokenizer, ScoreRequest, make_score_request
from evalfleet.inference.backends.loading import configure_pad_token, library_versions
from evalfleet.inference.backends.reasoning import reasoning_fingerprint
from evalfleet.inference.backends.threaded import OneAtATime
from evalfleet.inference.backends.windows import rolling_windows

log = get_logger("backend.hf")

DEFAULT_MAX_LENGTH = 2048
TOKENIZER_INFINITY = 1000000000000000019884624838656
AUTO_CPU_POSITIONS = 8192  # batch_size=auto on CPU: positions per forward


def resolve_max_length(config, tokenizer, default: int = DEFAULT_MAX_LENGTH) -> int:
    """lm-eval's ``resolve_max_length``: text_config/config attrs, tokenizer, then default."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max is not None and tok_max != TOKENIZER_INFINITY:
        return int(tok_max)
    return default


def _check_local_path(field: str, name: str) -> None:
    """Fail fast for a local-looking path that does not exist (instead of asking the hub)."""
    path = Path(name)
    looks_local = path.is_absolute() or name.startswith(".") or (
        str(path.parent) not in ("", ".") and path.parent.is_dir())
    if looks_local and not path.exists():
        raise BackendArgumentError(field, f"no such model directory: {name}")


@dataclass
class _Planned:
    """A scoring batch ready to run: its requests (ItemError or None where nothing is scored),
    the ScoreRequests among them, and the scorer's plan for those."""

    reqs: Sequence[ScoreRequest | ItemError | None]
    real: list[ScoreRequest]
    plan: ScorePlan


class HFBackend(Backend):
    """A causal ``AutoModelForCausalLM`` with lm-eval's HFLM tokenization and batching."""

    name: ClassVar[str] = "hf"

    def __init__(self, args: HFArgs, model, tokenizer, device: torch.device,
                 fingerprint_: str) -> None:
        self.args = args
        self.model = model
        self.device = device
        self.tok = HFTokenizer(tokenizer, add_bos_token=args.add_bos_token,
                               prefix_token_id=args.prefix_token_id)
        self.max_length = args.max_length or resolve_max_length(model.config, tokenizer)
        self.max_gen_toks = 256
        self._fingerprint = fingerprint_
        # the model and its counters: one thread at a time (also held by the CUDA batch-size
        # probe, which planning may call inside or outside a running batch)
        self._lock = threading.RLock()
        self._batches = OneAtATime()
        self._auto_sizes: dict[int, int] = {}
        self.scorer = Scorer(
            model, device,
            softmax_dtype=getattr(torch, args.softmax_dtype) if args.softmax_dtype else None,
            autocast_dtype=(getattr(torch, args.mixed_precision_dtype)
                            if args.mixed_precision_dtype else None),
            min_shared_tokens=args.min_shared_tokens, forward_cost=args.forward_cost,
            prefix_cache_bytes=args.prefix_cache_mb << 20,
        )
        self._gen_positions = 0
        self._notes: list[str] = []

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = 1) -> HFBackend:
        args = parse_hf_args(model_args, batch_size)
        _check_local_path("pretrained", args.pretrained)
        if args.tokenizer:
            _check_local_path("tokenizer", args.tokenizer)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if args.quant is not None:
            check_prerequisites(args.quant, device=args.device, cuda=torch.cuda.is_available())
        started = time.perf_counter()
        common = {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
        if args.subfolder:
            common["subfolder"] = args.subfolder
        loading, config_args = split_extra(args.extra)
        try:
            # the config takes the keys that are its attributes (as from_pretrained sets them)
            config, unused = transformers.AutoConfig.from_pretrained(
                args.pretrained, gguf_file=args.gguf_file, return_unused_kwargs=True,
                **common, **config_args)
        except (OSError, ValueError) as exc:
            raise BackendArgumentError("pretrained", f"cannot load config: {exc}") from exc
        reject_unused(unused, config.to_dict())
        tok_kwargs = dict(common)
        if not args.tokenizer and args.gguf_file is not None:
            tok_kwargs["gguf_file"] = args.gguf_file
        else:
            tok_kwargs["use_fast"] = args.use_fast_tokenizer
        if args.add_bos_token is not None:
            tok_kwargs["add_bos_token"] = args.add_bos_token
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                args.tokenizer or args.pretrained, **tok_kwargs)
        except (OSError, ValueError) as exc:
            raise BackendArgumentError("tokenizer", f"cannot load tokenizer: {exc}") from exc
        dtype: Any = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        if args.quant is not None:
            # lm-eval places a quantized model whole on its device (a device_map it is given
            # without parallelize is dropped); bitsandbytes places it while loading
            loading["quantization_config"] = bnb_config(args.quant)
            loading["device_map"] = {"": str(device)}
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                args.pretrained, config=config, dtype=dtype, gguf_file=args.gguf_file,
                **common, **loading)
        except (TypeError, AttributeError) as exc:
            named = [k for k in loading if k in str(exc)] or list(loading) or ["pretrained"]
            raise BackendArgumentError(named[0], f"rejected by from_pretrained: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise BackendArgumentError("pretrained", f"cannot load model: {exc}") from exc
        if args.quant is None:
            model.to(device)
        model.eval()
        configure_pad_token(tokenizer)
        fp = reasoning_fingerprint(cls._fingerprint_files(args), args.think_end_token)
        if args.quant is not None:  # quantized weights answer differently: a key of their own
            fp = "sha256:" + _sha256(f"{fp} {sorted(args.quant.config_kwargs().items())}")
        log.info("model_loaded", pretrained=args.pretrained, device=str(device),
                 dtype=str(model.dtype), seconds=round(time.perf_counter() - started, 2),
                 quantization=args.quant.flag if args.quant else None)
        backend = cls(args, model, tokenizer, device, fp)
        backend._announce_batch_size()
        return backend

    @staticmethod
    def _fingerprint_files(args: HFArgs) -> str:
        model_dir = resolve_local_dir(args.pretrained, args.revision, args.subfolder)
        files: list[Path] = []
        if model_dir is not None:
            files += model_files(model_dir, args.gguf_file)
        tok_dir = resolve_local_dir(args.tokenizer, args.revision) if args.tokenizer \
            else model_dir
        if tok_dir is not None and not (args.gguf_file and not args.tokenizer):
            files += tokenizer_files(tok_dir)
        return fingerprint(files, f"{args.pretrained}@{args.revision}")

    def _announce_batch_size(self) -> None:
        """With ``batch_size=auto``: choose the rows per forward at ``max_length`` now, and say
        it once, in the worker's log and in :meth:`load_notes`."""
        if not self.args.batch_auto:
            return
        rows, cap = self._batch_limit(self.max_length), self.args.max_batch_size
        rule = ("the largest that fits in memory; shorter rows are probed when they come"
                if self.device.type == "cuda" else
                f"at most {AUTO_CPU_POSITIONS} positions per forward: shorter rows get more")
        log.info("batch_size_auto", rows=rows, max_length=self.max_length,
                 device=str(self.device), max_batch_size=cap)
        self._notes.append(f"batch size auto: chose {rows} rows per forward at max_length "
                           f"{self.max_length} on {self.device} ({rule}, up to max_batch_size "
                           f"{cap})")

    def load_notes(self) -> list[str]:
        return list(self._notes)

    def model_info(self) -> ModelInfo:
        tok = self.tok.tok
        return ModelInfo(
            backend=self.name, model_name=self.args.pretrained, revision=self.args.revision,
            tokenizer=self.args.tokenizer or self.args.pretrained, max_length=self.max_length,
            fingerprint=self._fingerprint, dtype=str(self.model.dtype).removeprefix("torch."),
            device=str(self.device),
            num_parameters=sum(p.numel() for p in self.model.parameters()),
            eot_token_id=self.tok.eot_token_id, bos_token=tok.bos_token,
            eos_token=tok.eos_token, pad_token=tok.pad_token,
            capabilities=Capabilities(
                loglikelihood=True, loglikelihood_rolling=True, generate_until=True,
                chat_template=(ChatTemplateSupport.RENDER if tok.chat_template
                               else ChatTemplateSupport.NONE),
                max_context_tokens=self.max_length,
                prefix_sharing=self.args.prefix_sharing and self.scorer.supports_sharing,
                max_concurrent_batches=1),
            library_versions=library_versions("torch", "transformers", "evalfleet"),
        )

    @property
    def positions_computed(self) -> int:
        """Positions computed since the model was loaded (scoring and generation)."""
        return self.scorer.positions + self._gen_positions

    # ------------------------------------------------------------------ batching
    def _batch_limit(self, length: int) -> int:
        """Rows per forward for rows of ``length`` positions."""
        if not self.args.batch_auto:
            return int(self.args.batch_size)
        cap = self.args.max_batch_size
        if self.device.type != "cuda":
            return max(1, min(cap, AUTO_CPU_POSITIONS // max(1, length)))
        bucket = 1 << max(0, (length - 1).bit_length())
        if bucket not in self._auto_sizes:
            self._auto_sizes[bucket] = self._probe_cuda(min(bucket, self.max_length), cap)
        return self._auto_sizes[bucket]

    def _probe_cuda(self, length: int, cap: int) -> int:
        """Largest batch (halving from ``cap``) whose forward + log-softmax fits in memory.

        Runs under the model lock: planning may call it outside a running batch."""
        with self._lock, torch.inference_mode():
            return self._probe_cuda_locked(length, cap)

    def _probe_cuda_locked(self, length: int, cap: int) -> int:
        size = cap
        while size > 1:
            try:
                ids = torch.ones((size, length), dtype=torch.long, device=self.device)
                logits = self.model(ids).logits
                torch.log_softmax(logits, dim=-1)
                del ids, logits
                break
            except torch.cuda.OutOfMemoryError:
                size //= 2
            finally:
                torch.cuda.empty_cache()
        log.info("auto_batch_size", length=length, batch_size=size)
        return size

    def interrupt(self) -> None:
        """The model's forward in progress ends at its next layer, scoring and generation
        answer what they finished and ``CANCELLED`` the rest (see ``Backend.interrupt``)."""
        self.scorer.interrupt()

    # ------------------------------------------------------------------ requests
    async def _answer(self, prepare, compute) -> Answers:
        """Prepare outside the compute lock, compute under it; cost from the counters' delta."""
        def counted(prepared):
            with self._lock:
                before = self.positions_computed
                results = compute(prepared)
                return results, self.positions_computed - before

        (results, positions), seconds = await self._batches.run(prepare, counted)
        return Answers(results, Cost(positions_computed=positions, compute_seconds=seconds))

    def _plan(self, reqs: Sequence[ScoreRequest | ItemError | None],
              window_batch: int | None = None) -> _Planned:
        """Every forward for the ScoreRequests among ``reqs``: host work, done outside the model
        lock while another batch computes (the CUDA batch-size probe takes the lock itself)."""
        real = [r for r in reqs if isinstance(r, ScoreRequest)]
        plan = self.scorer.plan(real, self._batch_limit, shared=self.args.prefix_sharing,
                                window_batch=window_batch)
        return _Planned(reqs, real, plan)

    def _score(self, planned: _Planned) -> list[TokenScores | ItemError]:
        """Run a planned batch (under the model lock); None (an empty continuation) scores
        nothing, an ItemError stays the answer."""
        with torch.inference_mode():
            scores = iter(self.scorer.run(planned.plan, planned.real))
        empty = TokenScores(np.zeros(0, np.float32), np.zeros(0, bool))
        return [next(scores) if isinstance(r, ScoreRequest) else (r or empty)
                for r in planned.reqs]

    def _prepare_pairs(self, requests: Sequence[tuple[str, str]]
                       ) -> list[ScoreRequest | ItemError | None]:
        reqs: list[ScoreRequest | ItemError | None] = []
        for ctx, cont in self.tok.encode_requests(requests):
            if not ctx:  # a whitespace-only context (lm-eval fails an assertion here)
                ctx = [self.tok.prefix_token_id]
            if len(cont) > self.max_length:
                reqs.append(ItemError(f"continuation of {len(cont)} tokens exceeds max_length "
                                      f"{self.max_length}; raise model_args max_length if the "
                                      "model allows it"))
            else:
                reqs.append(make_score_request(ctx, cont, self.max_length) if cont else None)
        return reqs

    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        return await self._answer(lambda: self._plan(self._prepare_pairs(requests)),
                                  self._score)

    def _prepare_rolling(self, texts: Sequence[str]) -> tuple[_Planned, list[int]]:
        """Every text's rolling windows, planned; and the number of windows per text."""
        reqs: list[ScoreRequest] = []
        counts: list[int] = []
        for tokens in self.tok.encode_many(texts):
            windows = rolling_windows(tokens, self.tok.prefix_token_id, self.max_length)
            counts.append(len(windows))
            reqs.extend(make_score_request(ctx, cont, self.max_length) for ctx, cont in windows)
        # lm-eval batches the windows in document order, batch_size at a time, then sorts each
        window_batch = None if self.args.prefix_sharing else (
            self._batch_limit(self.max_length) if self.args.batch_auto
            else int(self.args.batch_size))
        return self._plan(reqs, window_batch), counts

    def _score_rolling(self, prepared: tuple[_Planned, list[int]]
                       ) -> list[TokenScores | ItemError]:
        planned, counts = prepared
        scores = self._score(planned)
        out: list[TokenScores | ItemError] = []
        pos = 0
        for n in counts:
            parts = scores[pos: pos + n]
            pos += n
            cut = next((p for p in parts if isinstance(p, ItemError)), None)
            if cut is not None:  # a window not scored (interrupted): the text is not
                out.append(cut)
                continue
            totals = [p.backend_total for p in parts]
            out.append(TokenScores(
                np.concatenate([p.logprobs for p in parts]) if parts else np.zeros(0, np.float32),
                np.concatenate([p.greedy for p in parts]) if parts else np.zeros(0, bool),
                # lm-eval adds the windows' (dtype-summed) values as Python floats
                backend_total=sum(totals) if parts and None not in totals else None))
        return out

    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        return await self._answer(lambda: self._prepare_rolling(texts), self._score_rolling)

    def _prepare_generation(self, requests: Sequence[GenerationRequest]
                            ) -> tuple[list[str | ItemError | None], dict[tuple, list[int]]]:
        """Per-item refusals, and the answerable requests grouped by generation settings."""
        results: list[str | ItemError | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            if not isinstance(req.context, str):
                results[i] = ItemError("the hf backend takes prompt text, not chat messages; "
                                       "chat templates are rendered by ApplyChatTemplate")
            elif req.params.max_gen_toks >= self.max_length:
                results[i] = ItemError(
                    f"gen_kwargs.max_gen_toks {req.params.max_gen_toks} must be below "
                    f"max_length {self.max_length}")
            else:
                groups.setdefault(req.params.key(), []).append(i)
        return results, groups

    def _generate(self, requests: Sequence[GenerationRequest], prepared) -> list[str | ItemError]:
        results, groups = prepared
        eos = self.tok.decode([self.tok.eot_token_id], skip_special_tokens=False)
        with torch.inference_mode():
            for idxs in groups.values():
                params = requests[idxs[0]].params
                until = list(params.until) + ([eos] if eos not in params.until else [])
                max_ctx_len = self.max_length - params.max_gen_toks
                lengths = {i: len(self.tok.encode(requests[i].context)) for i in idxs}
                order = sorted(idxs, key=lambda i: (-lengths[i], requests[i].context))
                n = self._batch_limit(self.max_length) if self.args.batch_auto \
                    else int(self.args.batch_size)
                for pos in range(0, len(order), n):
                    chunk = order[pos: pos + n]
                    try:
                        self._generate_chunk(chunk, requests, params, until, max_ctx_len,
                                             results)
                    except ForwardInterrupted:  # the worker stops: this chunk and the rest
                        for i in chunk:
                            results[i] = CANCELLED
        return [r if r is not None else "" for r in results]

    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        return await self._answer(lambda: self._prepare_generation(requests),
                                  lambda prepared: self._generate(requests, prepared))

    def _generate_chunk(self, chunk: list[int], requests: Sequence[GenerationRequest],
                        params: GenerationParams, until: list[str], max_ctx_len: int,
                        results: list) -> None:
        contexts = [requests[i].context for i in chunk]
        ids, mask = self.tok.batch_encode_left(contexts, max_ctx_len)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        generated = generate_batch(
            self.model, self.tok.tok, ids, mask, stops=until,
            max_gen_toks=params.max_gen_toks, do_sample=params.do_sample,
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            autocast_dtype=self.scorer.autocast_dtype,
        )
        steps = max(len(g) for g in generated)
        self._gen_positions += len(chunk) * (ids.shape[1] + max(0, steps - 1))
        for row, (i, toks) in enumerate(zip(chunk, generated, strict=True)):
            results[i] = generated_answer(
                self.tok, toks, until=until, max_gen_toks=params.max_gen_toks,
                think_end_token=self.args.think_end_token, pad_id=self.tok.tok.pad_token_id,
                prompt_tokens=int(mask[row].sum()))

    # ------------------------------------------------------------------ chat templates
    async def apply_chat_template(self, conversations: Sequence[Conversation],
                                  template_name: str | None = None) -> ChatRendering:
        tok = self.tok.tok
        template = select_template(tok.chat_template, template_name)
        prompts = await asyncio.to_thread(render_conversations, tok, conversations,
                                          self.args.chat_template_args)
        return ChatRendering(prompts, template, _sha256(template))


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()
