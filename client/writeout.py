"""``--write_out``: each task's first document as lm-eval 0.4.13's ``print_writeout`` shows it
(the prompt, the target, and the first request of document 0)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from evalfleet.tasks import Request, Task


def _instance_repr(request: Request, doc: dict[str, Any]) -> str:
    """lm-eval's ``Instance`` dataclass repr for a request."""
    meta = (request.task_name, request.doc_id, request.repeats)
    return (f"Instance(request_type={str(request.request_type)!r}, doc={doc!r}, "
            f"arguments={request.arguments!r}, idx={request.idx}, metadata={meta!r}, "
            f"resps=[], filtered_resps={{}}, task_name={request.task_name!r}, "
            f"doc_id={request.doc_id}, repeats={request.repeats})")


def task_writeout(task: Task, requests: Sequence[Request], docs: Sequence[tuple[int, dict]]
                  ) -> list[str]:
    """The two log lines lm-eval prints for a task's document 0 (none when it has no docs)."""
    by_id = dict(docs)
    for request in requests:
        if request.doc_id < 1:
            doc = by_id[request.doc_id]
            header = (f"Task: ConfigurableTask(task_name={task.name},output_type="
                      f"{task.output_type},num_fewshot={task.effective_num_fewshot},"
                      f"num_samples={len(task.all_eval_docs())})")
            return [f"{header}; document {request.doc_id}; context prompt (starting on next "
                    f"line):    \n{request.arguments[0]}\n(end of prompt on previous line)\n"
                    "target string or answer choice index (starting on next line):\n"
                    f"{task.doc_target(doc)}\n(end of target on previous line)",
                    f"Request: {_instance_repr(request, doc)}"]
    return []


def writeout_lines(parsed: Any, data_dir: str | None, include_paths: Sequence[str]
                   ) -> Iterator[str]:
    """Write-out lines for every task of a parsed spec (built here, on the client)."""
    from evalfleet.server.job_hooks import prepare_task
    from evalfleet.server.planning import load_tasks

    tree = load_tasks(parsed, data_dir, include_paths)
    for name, task in tree.tasks.items():
        prepare_task(task, parsed.task_overrides)
        samples = (parsed.samples or {}).get(name)
        first = samples[:1] if samples else None
        requests = task.build_requests(
            limit=None if first else 1, samples=first, num_fewshot=parsed.num_fewshot,
            fewshot_seed=parsed.seeds["fewshot_seed"],
            system_instruction=parsed.spec.system_instruction or None,
            apply_chat_template=parsed.spec.apply_chat_template,
            gen_kwargs=parsed.gen_kwargs or None)
        yield from task_writeout(task, requests, task.eval_docs(None if first else 1, first))
