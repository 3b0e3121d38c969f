"""What a job needs from its workers, checked before any work starts.

A worker reports typed ``Capabilities``; a job whose tasks need a request kind that a worker
cannot answer correctly (e.g. loglikelihood on a chat endpoint, whose prompt logprobs do not
exist, or on a server whose logprobs failed the honesty probe) is refused with
FAILED_PRECONDITION naming the task, the request kind, the worker, the reason and what to do.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.common.request_kind import RequestKind
from evalfleet.v1 import inference_pb2 as ipb

_DEFAULT_REMEDY = {
    RequestKind.LOGLIKELIHOOD: "use a backend that returns prompt logprobs (hf, vllm, or "
                               "local-completions against vLLM's OpenAI-compatible server), or "
                               "run generative tasks only",
    RequestKind.LOGLIKELIHOOD_ROLLING: "use a backend that returns prompt logprobs (hf, vllm, "
                                       "or local-completions against vLLM's OpenAI-compatible "
                                       "server)",
    RequestKind.GENERATE_UNTIL: "use a backend that generates text",
}


def _generate_hint(task: str, kind: RequestKind, caps: ipb.Capabilities,
                   multiple_choice: Collection[str], apply_chat_template: bool) -> str:
    """For a multiple-choice task refused loglikelihood: its ``@generate`` form (all such
    tasks of the job), and ``--apply_chat_template`` where a chat endpoint lacks it."""
    if kind is not RequestKind.LOGLIKELIHOOD or task not in multiple_choice \
            or not caps.generate_until:
        return ""
    forms = ",".join(f"{t}@generate" for t in sorted(multiple_choice))
    chat = " --apply_chat_template" if caps.chat_only else ""
    hint = (f" Or ask the multiple choice generatively: --tasks {forms}{chat} (the choices "
            "lettered in the prompt, the answer letter scored by exact_match).")
    if caps.chat_only and not apply_chat_template:
        hint += (" This worker is a chat endpoint and takes chat messages only: add "
                 "--apply_chat_template either way.")
    return hint


def check_request_kinds(task_kinds: Mapping[str, Iterable[RequestKind]],
                        workers: Mapping[str, ipb.ModelInfo], *,
                        multiple_choice: Collection[str] = (),
                        apply_chat_template: bool = True) -> None:
    """Refuse a job whose tasks ask a request kind some worker cannot answer.

    ``task_kinds`` maps each task to the request kinds it asks; ``workers`` maps each worker
    address to the model info it reported. A refused task named in ``multiple_choice`` is
    told its ``@generate`` form (and a chat endpoint job without ``apply_chat_template`` to
    add it, in the same message).
    """
    for task, kinds in task_kinds.items():
        for kind in sorted(RequestKind.parse(k) for k in kinds):
            for address, info in workers.items():
                caps = info.capabilities
                if getattr(caps, kind.capability):
                    continue
                reason = caps.logprobs_unavailable_reason if kind.needs_logprobs else ""
                remedy = (caps.logprobs_remedy if kind.needs_logprobs else "") \
                    or _DEFAULT_REMEDY[kind]
                raise FailedPreconditionError(
                    f"task {task} needs {kind} requests, which worker {address} (backend "
                    f"{info.backend}, model {info.model_name}) cannot answer"
                    f"{': ' + reason if reason else ''}. Instead: {remedy}."
                    + _generate_hint(task, kind, caps, multiple_choice, apply_chat_template))


def check_chat_only(apply_chat_template: bool, workers: Mapping[str, ipb.ModelInfo]) -> None:
    """A chat-only endpoint takes chat messages: its jobs must render a chat template."""
    if apply_chat_template:
        return
    for address, info in workers.items():
        if info.capabilities.chat_only:
            raise FailedPreconditionError(
                f"worker {address} (backend {info.backend}) is a chat endpoint and takes chat "
                "messages only: add --apply_chat_template (spec.apply_chat_template) so that "
                "prompts are sent as messages")


def wants_batch_api(model_args: Mapping[str, object]) -> bool:
    """Whether a job's model args ask for the provider's batch API (``batch_api=true``)."""
    return str(model_args.get("batch_api", "")).strip().lower() in ("true", "1", "yes")


def check_batch_api(model_args: Mapping[str, object], workers: Mapping[str, ipb.ModelInfo]
                    ) -> None:
    """A job whose model args say ``batch_api=true`` needs workers that send batches through
    the provider's batch API (``Capabilities.batch_api``)."""
    if not wants_batch_api(model_args):
        return
    for address, info in workers.items():
        if not info.capabilities.batch_api:
            raise FailedPreconditionError(
                f"model_args batch_api=true, but worker {address} (backend {info.backend}) "
                "has no provider batch API: start its worker with batch_api=true in its "
                "model_args on openai-completions, local-completions, openai-chat-completions, "
                "local-chat-completions or anthropic-chat, or drop batch_api from the job")
