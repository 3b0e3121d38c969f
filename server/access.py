"""What a remote client may ask of the coordinator, and how much.

A coordinator serves many teams: a client must not make it read its files or run code, and one
job must not exhaust it. The operator opts in to the risky parts with flags:

- ``spec.include_paths`` and ``ListTasksRequest.include_paths`` (task directories on the
  coordinator's disk): ``--allow_include_paths``; the operator's own ``--include_path`` always
  works;
- ``spec.worker_addresses`` (make the coordinator connect where the client says):
  ``--allow_spec_workers``;
- ``trust_remote_code`` in ``spec.model_args`` (code shipped with a model or dataset):
  ``--allow_remote_code``;
- tasks that execute model output (``spec.confirm_run_unsafe_code``) need the operator's own
  ``--confirm_run_unsafe_code`` (``runner.check_unsafe_code``), and, on a machine without a
  working bubblewrap, ``--allow_weak_sandbox`` (FAILED_PRECONDITION otherwise).

Refusals are PERMISSION_DENIED naming the field and the flag. Sizes are bounded: the spec's
encoded size (RESOURCE_EXHAUSTED), the number of task names and of leaf tasks, ``limit``,
``samples`` indices and ``bootstrap_iters`` (INVALID_ARGUMENT), and the requests one job may
plan (RESOURCE_EXHAUSTED). The request message itself is bounded by the server's
``--max_message_bytes`` (gRPC answers RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evalfleet.common.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from evalfleet.v1 import coordinator_pb2 as cpb


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class AccessPolicy:
    """The operator's choices for one coordinator (flags of ``serve coordinator``)."""

    allow_include_paths: bool = False
    allow_spec_workers: bool = False
    allow_remote_code: bool = False
    #: run generated code under a sandbox weaker than bubblewrap (unshare, none)
    allow_weak_sandbox: bool = False
    max_spec_bytes: int = 1024 * 1024
    max_tasks: int = 2000
    max_limit: float = 1_000_000
    max_sample_indices: int = 1_000_000
    max_bootstrap_iters: int = 10_000_000
    max_requests: int = 20_000_000

    @classmethod
    def local(cls, *, allow_weak_sandbox: bool = False) -> AccessPolicy:
        """Everything allowed (a weak sandbox only if asked): an embedded coordinator serving
        only its own user."""
        return cls(allow_include_paths=True, allow_spec_workers=True, allow_remote_code=True,
                   allow_weak_sandbox=allow_weak_sandbox)

    def check_size(self, spec: cpb.EvaluationSpec) -> None:
        """RESOURCE_EXHAUSTED for a spec over ``max_spec_bytes`` (checked before parsing)."""
        size = spec.ByteSize()
        if size > self.max_spec_bytes:
            raise ResourceExhaustedError(
                f"spec: {size} bytes; this coordinator accepts at most {self.max_spec_bytes} "
                "(--max_spec_bytes)")

    def check_spec(self, spec: cpb.EvaluationSpec, model_args: dict[str, Any]) -> None:
        """Refuse what this coordinator does not allow, before any work (the spec's size is
        checked before it is parsed: :meth:`check_size`)."""
        if spec.include_paths and not self.allow_include_paths:
            raise PermissionDeniedError(
                "spec.include_paths: this coordinator does not read task directories named by "
                "clients; ask its operator to add them with --include_path, or to start it "
                "with --allow_include_paths")
        if spec.worker_addresses and not self.allow_spec_workers:
            raise PermissionDeniedError(
                "spec.worker_addresses: this coordinator runs jobs on its own workers only "
                "(see ListWorkers; choose a model with spec.model_fingerprint); its operator "
                "can allow client-named workers with --allow_spec_workers")
        if _truthy(model_args.get("trust_remote_code", False)) and not self.allow_remote_code:
            raise PermissionDeniedError(
                "spec.model_args.trust_remote_code: this coordinator does not run code shipped "
                "with models or datasets; its operator can allow it with --allow_remote_code")
        names = [n for t in spec.tasks for n in t.split(",") if n.strip()]
        if len(names) > self.max_tasks:
            raise InvalidArgumentError(
                f"spec.tasks: {len(names)} names; at most {self.max_tasks} per job")
        if spec.HasField("limit") and spec.limit > self.max_limit:
            raise InvalidArgumentError(
                f"spec.limit: {spec.limit:g} documents per task; at most {self.max_limit:g}")
        indices = sum(len(d.indices) for d in spec.samples.values())
        if indices > self.max_sample_indices:
            raise InvalidArgumentError(
                f"spec.samples: {indices} document indices; at most {self.max_sample_indices}")
        if spec.HasField("bootstrap_iters") and spec.bootstrap_iters > self.max_bootstrap_iters:
            raise InvalidArgumentError(
                f"spec.bootstrap_iters: {spec.bootstrap_iters}; at most "
                f"{self.max_bootstrap_iters}")

    def check_include_paths(self, paths: list[str], field: str) -> None:
        if paths and not self.allow_include_paths:
            raise PermissionDeniedError(
                f"{field}: this coordinator does not read task directories named by clients; "
                "its operator can add them with --include_path or allow them with "
                "--allow_include_paths")

    def check_tasks(self, leaf_tasks: int) -> None:
        if leaf_tasks > self.max_tasks:
            raise InvalidArgumentError(
                f"spec.tasks: expands to {leaf_tasks} tasks; at most {self.max_tasks} per job")

    def check_requests(self, requests: int) -> None:
        if requests > self.max_requests:
            raise ResourceExhaustedError(
                f"spec: the job plans {requests} model requests; this coordinator accepts at "
                f"most {self.max_requests} per job (lower spec.limit or split the tasks)")
