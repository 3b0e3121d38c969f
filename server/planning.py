"""Planning a job: load its tasks and build every request, as lm-eval builds them.

All prompts are built here, on the coordinator, so few-shot draws and chat rendering never
depend on the number of workers. Each distinct request gets a content id
(``sha256(type, arguments)``) and becomes one :class:`WorkItem`, shared by every task that asks
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalfleet.common.errors import InvalidArgumentError, NotFoundError
from evalfleet.common.generation import GenerationParams
from evalfleet.common.ids import request_id
from evalfleet.common.request_kind import RequestKind
from evalfleet.server import job_hooks
from evalfleet.server import results as results_mod
from evalfleet.server.chat import ChatRenderer
from evalfleet.server.spec import ParsedSpec
from evalfleet.server.workers import WorkItem
from evalfleet.tasks import (
    DataNotFoundError,
    EvalTask,
    Request,
    SampleIndexError,
    TaskError,
    TaskManager,
    TaskNotFoundError,
    TaskTree,
)
from evalfleet.v1 import inference_pb2 as ipb


def generation_params(gen_kwargs: dict[str, Any], seed: int | None) -> ipb.GenerationParams:
    """lm-eval's gen_kwargs normalised into the wire ``GenerationParams``.

    ``seed`` seeds sampled repeats when the task's gen_kwargs give none.
    """
    normal = GenerationParams.from_gen_kwargs(gen_kwargs)
    params = ipb.GenerationParams(until=normal.until, max_gen_toks=normal.max_gen_toks,
                                  temperature=normal.temperature, do_sample=normal.do_sample)
    if normal.top_p is not None:
        params.top_p = normal.top_p
    if normal.top_k is not None:
        params.top_k = normal.top_k
    if normal.seed is not None:
        params.seed = normal.seed
    elif seed is not None and normal.do_sample:
        params.seed = seed
    return params


@dataclass
class TaskPlan:
    """A task's documents and requests, with the content id of each request."""

    task: EvalTask
    docs: list[tuple[int, dict]]
    requests: list[Request]
    request_ids: list[str]
    answer_ids: list[str]  # one per request and repeat
    original_size: int

    @property
    def request_types(self) -> set[RequestKind]:
        """The model request kinds this task asks for."""
        return {r.request_type for r in self.requests}


@dataclass
class JobPlan:
    """Everything a job will ask the workers, de-duplicated across tasks."""

    tasks: list[TaskPlan]
    groups: list[results_mod.GroupInfo]
    roots: list[str]
    work: dict[str, WorkItem]
    chat: ChatRenderer | None = None

    def describe(self, answer_id: str) -> str:
        """Which task, document and request an answer id belongs to (for error messages)."""
        for plan in self.tasks:
            for req, rid in zip(plan.requests, plan.request_ids, strict=True):
                if answer_id.split("#", 1)[0] == rid:
                    return (f"task {plan.task.name} doc {req.doc_id} ({req.request_type} "
                            f"#{req.idx})")
        return f"request {answer_id[:12]}"


def _leaves(tree: TaskTree, name: str) -> list[str]:
    """Leaf tasks under a group (recursively), in order."""
    group = tree.groups.get(name)
    if group is None:
        return [name] if name in tree.tasks else []
    out: list[str] = []
    for child in group.children:
        out.extend(t for t in _leaves(tree, child) if t not in out)
    return out


def load_tasks(parsed: ParsedSpec, data_dir: str | Path | None,
               include_paths: Sequence[str]) -> TaskTree:
    """Resolve the spec's task names; NOT_FOUND with close matches for an unknown one,
    INVALID_ARGUMENT naming the file for a bad task file."""
    try:
        manager = TaskManager(include_paths=[*include_paths, *parsed.spec.include_paths],
                              data_dir=data_dir,
                              metadata={**parsed.model_args, **parsed.metadata})
        names = [n.strip() for t in parsed.spec.tasks for n in t.split(",") if n.strip()]
        return manager.load(names)
    except TaskNotFoundError as exc:
        hint = f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""
        raise NotFoundError(f"spec.tasks: unknown task '{exc.name}'{hint}{exc.note}") from exc
    except DataNotFoundError as exc:
        raise NotFoundError(str(exc)) from exc
    except TaskError as exc:
        raise InvalidArgumentError(f"task file error: {exc}") from exc


def check_data(tree: TaskTree, parsed: ParsedSpec) -> None:
    """NOT_FOUND, in a second and naming the task, the folder searched and how to point at a
    mirror, when a split one of the job's tasks reads cannot be had; reads no documents."""
    for task in tree.tasks.values():
        try:
            task.require_data(parsed.num_fewshot)
        except DataNotFoundError as exc:
            raise NotFoundError(str(exc)) from exc


def _work_items(req: Request, rid: str, parsed: ParsedSpec, chat: ChatRenderer | None
                ) -> list[WorkItem]:
    """One work item per repeat of a request (repeats of a sampled request differ by seed)."""
    items = []
    for r in range(max(req.repeats, 1)):
        aid = rid if req.repeats <= 1 else f"{rid}#{r}"
        if req.request_type == RequestKind.GENERATE_UNTIL:
            seed = parsed.seeds["random_seed"] + r if req.repeats > 1 else None
            items.append(WorkItem(aid, req.request_type, (req.arguments[0],),
                                  generation_params(req.arguments[1], seed),
                                  chat_messages=bool(chat and chat.messages)))
        else:
            items.append(WorkItem(aid, req.request_type, tuple(req.arguments)))
    return items


def build_plan(parsed: ParsedSpec, data_dir: str | Path | None, include_paths: Sequence[str],
               chat: ChatRenderer | None = None, tree: TaskTree | None = None) -> JobPlan:
    """Build every request of the spec's tasks (lm-eval's, in lm-eval's order).

    ``chat`` renders prompts with the model's chat template (needed with apply_chat_template);
    ``tree`` is the already loaded task tree, if any.
    """
    if parsed.apply_chat_template and chat is None:
        raise InvalidArgumentError("spec.apply_chat_template: no chat template renderer")
    job_hooks.start_planning(parsed.spec)
    tree = tree if tree is not None else load_tasks(parsed, data_dir, include_paths)
    check_data(tree, parsed)
    plans: list[TaskPlan] = []
    work: dict[str, WorkItem] = {}
    names = list(tree.tasks.keys())
    unknown = sorted(set(parsed.samples or ()) - set(names))
    if unknown:
        raise InvalidArgumentError(
            f"spec.samples: {', '.join(map(repr, unknown))} not among the job's tasks "
            f"({', '.join(names)})")
    for name in names:
        task = job_hooks.prepare_task(tree.tasks[name], parsed.task_overrides)
        samples = (parsed.samples or {}).get(name)
        try:
            built = job_hooks.task_requests(task, parsed, samples, chat)
            requests, docs, original = built.requests, built.docs, built.original_size
        except DataNotFoundError as exc:
            raise NotFoundError(str(exc)) from exc
        except SampleIndexError as exc:
            raise InvalidArgumentError(f"spec.samples['{name}']: {exc}") from exc
        except NotImplementedError as exc:
            raise InvalidArgumentError(f"task {name}: {exc}") from exc
        except TaskError as exc:
            raise InvalidArgumentError(f"task {name}: {exc}") from exc
        ids: list[str] = []
        answer_ids: list[str] = []
        for req in requests:
            rid = request_id(req.request_type, req.arguments)
            ids.append(rid)
            try:
                items = _work_items(req, rid, parsed, chat)
            except InvalidArgumentError as exc:  # the task's generation_kwargs
                raise InvalidArgumentError(f"task {name}: {exc.message}") from exc
            for item in items:
                answer_ids.append(item.request_id)
                work.setdefault(item.request_id, item)
        plans.append(TaskPlan(task, docs, requests, ids, answer_ids, original))
    groups = [
        results_mod.GroupInfo(
            name=g.name, alias=getattr(g, "alias", None), version=getattr(g, "version", None),
            children=list(g.children), leaves=_leaves(tree, g.name),
            aggregate_metric_list=[
                {"metric": a.metric, "filter_list": a.filter_list,
                 "weight_by_size": a.weight_by_size}
                for a in g.aggregate_metric_list])
        for g in tree.groups.values()
    ]
    return JobPlan(plans, groups, list(tree.roots), work, chat)
