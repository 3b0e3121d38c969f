"""What a job needs from its workers, checked before any work starts.

A worker reports typed ``Capabilities``; a job whose tasks need a request kind that a worker
cannot answer correctly (e.g. loglikelihood on a chat endpoint, whose prompt logprobs do not
exist, or on a server whose logprobs failed the honesty probe) is refused with
FAILED_PRECONDITION naming the task, the request kind, the worker, the reason and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.v1 import inference_pb2 as ipb

_KIND_FIELD = {
    "loglikelihood": "loglikelihood",
    "loglikelihood_rolling": "loglikelihood_rolling",
    "generate_until": "generate_until",
}
_DEFAULT_REMEDY = {
    "loglikelihood": "use a backend that returns prompt logprobs (hf, vllm, or local-completions "
                     "against vLLM's OpenAI-compatible server), or run generative tasks only",
    "loglikelihood_rolling": "use a backend that returns prompt logprobs (hf, vllm, or "
                             "local-completions against vLLM's OpenAI-compatible server)",
    "generate_until": "use a backend that generates text",
}


def check_request_kinds(task_kinds: Mapping[str, Iterable[str]],
                        workers: Mapping[str, ipb.ModelInfo]) -> None:
    """Refuse a job whose tasks ask a request kind some worker cannot answer.

    ``task_kinds`` maps each task to the request kinds it asks; ``workers`` maps each worker
    address to the model info it reported.
    """
    for task, kinds in task_kinds.items():
        for kind in sorted(kinds):
            for address, info in workers.items():
                caps = info.capabilities
                if getattr(caps, _KIND_FIELD[kind]):
                    continue
                reason = caps.logprobs_unavailable_reason if kind != "generate_until" else ""
                remedy = (caps.logprobs_remedy if kind != "generate_until" else "") \
                    or _DEFAULT_REMEDY[kind]
                raise FailedPreconditionError(
                    f"task {task} needs {kind} requests, which worker {address} (backend "
                    f"{info.backend}, model {info.model_name}) cannot answer"
                    f"{': ' + reason if reason else ''}. Instead: {remedy}.")


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
