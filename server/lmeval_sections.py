"""The parts of lm-eval's results document that describe the run rather than the tasks:
``config``, the model and tokenizer fields, the chat-template fields, ``task_hashes``, and the
samples records as lm-eval serialises them."""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from typing import Any

from evalfleet.common.redact import redact_model_args
from evalfleet.server import results as results_mod
from evalfleet.server.chat import system_instruction_sha
from evalfleet.server.evaluator import TaskScores
from evalfleet.server.job import Job


def config_section(job: Job) -> dict[str, Any]:
    """lm-eval's ``config`` section, plus evalfleet's own run facts."""
    parsed, info = job.parsed, job.model_info
    return {
        "model": parsed.spec.model or info.backend,
        # A --coordinator run names no model_args: those its worker was started with are the
        # ones used. Secrets are hidden in both (the spec's are already, when the job is
        # created; a worker's are by the worker, and again here for an older worker).
        "model_args": redact_model_args(parsed.model_args or dict(info.model_args)),
        "model_num_parameters": info.num_parameters,
        "model_dtype": info.dtype,
        "model_revision": info.revision,
        "model_sha": "",
        "batch_size": parsed.batch_size,
        "batch_sizes": [],
        "device": info.device,
        "use_cache": None,
        "limit": float(parsed.limit) if parsed.limit is not None else None,
        "bootstrap_iters": parsed.bootstrap_iters,
        "gen_kwargs": parsed.gen_kwargs,
        **parsed.seeds,
        "num_fewshot": parsed.num_fewshot,
        "workers": sorted(job.served_by),
        "model_fingerprint": info.fingerprint,
        "positions_computed": job.positions_computed,
        "unique_requests": len(job.plan.work),
        "evaluation_id": job.id,
    }


def model_section(job: Job) -> dict[str, Any]:
    """Model, tokenizer and library fields; library versions are the worker's own."""
    info = job.model_info
    name = job.parsed.model_args.get("pretrained") or info.model_name
    return {
        "transformers_version": info.library_versions.get("transformers"),
        "evalfleet_version": version("evalfleet"),
        "worker_library_versions": dict(info.library_versions),
        "upper_git_hash": None,
        "tokenizer_pad_token": [info.pad_token, ""] if info.pad_token else None,
        "tokenizer_eos_token": [info.eos_token, ""] if info.eos_token else None,
        "tokenizer_bos_token": [info.bos_token, ""] if info.bos_token else None,
        "eot_token_id": info.eot_token_id,
        "max_length": info.max_length,
        "task_hashes": {},
        "model_source": job.parsed.spec.model or info.backend,
        "model_name": str(name),
        "model_name_sanitized": results_mod.sanitize_model_name(str(name)),
    }


def chat_section(job: Job) -> dict[str, Any]:
    """lm-eval's system-instruction and chat-template fields."""
    spec, chat = job.parsed.spec, job.plan.chat
    return {
        "system_instruction": spec.system_instruction or None,
        "system_instruction_sha": system_instruction_sha(spec.system_instruction),
        "fewshot_as_multiturn": job.parsed.fewshot_as_multiturn,
        "chat_template": chat.template if chat is not None else None,
        "chat_template_sha": chat.template_sha if chat is not None else None,
    }


def task_hashes(scores: list[TaskScores]) -> dict[str, str]:
    """lm-eval's ``task_hashes``: per task, sha256 over its samples' hashes."""
    return {
        s.task.name: hashlib.sha256("".join(
            r["doc_hash"] + r["prompt_hash"] + r["target_hash"]
            for r in s.samples).encode("utf-8")).hexdigest()
        for s in scores}


def sanitize_sample(value: Any) -> Any:
    """Samples as lm-eval writes them: tuples become lists, unknown objects strings."""
    if isinstance(value, dict):
        return {k: sanitize_sample(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize_sample(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
