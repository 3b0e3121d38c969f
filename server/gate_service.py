"""The coordinator's release gate (``EvaluateGate``): the gate of ``evalfleet gate`` run on two
evaluations of the coordinator's store, so a registry's webhook asks the service, not a CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from evalfleet.common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from evalfleet.reporting.gate import evaluate_gate
from evalfleet.reporting.gate_policy import parse_policy
from evalfleet.reporting.runs import Run
from evalfleet.server.store import JobStore
from evalfleet.v1 import coordinator_pb2 as cpb

#: The proto's verdicts by the names the verdict document uses.
VERDICTS = {"GO": cpb.GATE_VERDICT_GO, "NO-GO": cpb.GATE_VERDICT_NO_GO,
            "INCONCLUSIVE": cpb.GATE_VERDICT_INCONCLUSIVE}


async def stored_run(store: JobStore, evaluation_id: str, field: str) -> Run:
    """A succeeded evaluation's results and samples, as a :class:`Run` labelled by its id."""
    if not evaluation_id:
        raise InvalidArgumentError(f"{field}: give the evaluation's id")
    record = await store.get_job(evaluation_id)
    if record is None:
        raise NotFoundError(f"{field}: evaluation '{evaluation_id}' not found")
    if record.state != cpb.EVALUATION_STATE_SUCCEEDED or record.results is None:
        state = cpb.EvaluationState.Name(record.state).removeprefix("EVALUATION_STATE_")
        detail = f": {record.error}" if record.error else ""
        raise FailedPreconditionError(
            f"{field}: evaluation '{evaluation_id}' has no results ({state.lower()}{detail})")
    results = json.loads(cpb.EvaluationResults.FromString(record.results).results_json)
    samples: dict[str, list[dict]] = {}
    async for task, line in store.iter_samples(evaluation_id):
        samples.setdefault(task, []).append(json.loads(line))
    return Run(path=Path(evaluation_id), results=results, samples=samples, label=evaluation_id)


async def evaluate_stored_gate(store: JobStore, request: cpb.EvaluateGateRequest
                               ) -> cpb.EvaluateGateResponse:
    """``EvaluateGate``: the policy is checked first, then both evaluations are read."""
    policy = parse_policy(request.policy_yaml, request.policy_name or "<request>")
    a = await stored_run(store, request.baseline_id, "baseline_id")
    b = await stored_run(store, request.candidate_id, "candidate_id")
    verdict = await asyncio.to_thread(evaluate_gate, policy, a, b,
                                      baseline=request.baseline_id,
                                      candidate=request.candidate_id)
    return cpb.EvaluateGateResponse(
        verdict=VERDICTS[verdict["verdict"]], verdict_json=json.dumps(verdict),
        policy_sha256=policy.sha256, reasons=verdict["reasons"],
        checks=[cpb.GateCheck(task=c["task"], metric=c["metric"] or "",
                              filter=c["filter"] or "", kind=c["kind"], tier=c["tier"],
                              status=c["status"], message=c["message"])
                for c in verdict["checks"]])
