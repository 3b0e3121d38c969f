"""Policy without mutation: a job's spec is normalised once into its parsed spec, and neither the
caller's spec nor the caller's coordinator options are changed (issue 25)."""

from __future__ import annotations

from evalfleet.server.access import AccessPolicy
from evalfleet.v1 import coordinator_pb2 as cpb


class _CountingPolicy(AccessPolicy):
    """The default policy, counting how often a spec's size is checked."""

    size_checks: int = 0

    def check_size(self, spec: cpb.EvaluationSpec) -> None:
        type(self).size_checks += 1
        super().check_size(spec)


def test_create_normalises_a_copy_and_checks_the_size_once(background_loop, tiny_worker,
                                                           data_dir):
    """``predict_only`` implies ``log_samples`` and secrets are hidden in what is stored and
    answered, while the spec the caller passed stays as it was; the size is checked once."""
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=1, bootstrap_iters=0,
                              predict_only=True, model_args="api_key=sk-secret-123")
    before = spec.SerializeToString(deterministic=True)
    server, runner = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], data_dir=data_dir,
        options=CoordinatorOptions(policy=_CountingPolicy())))
    try:
        _CountingPolicy.size_checks = 0
        job = background_loop.run(runner.create(spec))
        record = background_loop.run(runner.store.get_job(job.id))
    finally:
        background_loop.run(server.stop(0.5))
    assert spec.SerializeToString(deterministic=True) == before  # the caller's spec
    assert not spec.log_samples and spec.model_args == "api_key=sk-secret-123"
    stored = cpb.EvaluationSpec.FromString(record.spec)
    for normalised in (job.parsed.spec, stored):
        assert normalised.log_samples and normalised.predict_only
        assert "sk-secret-123" not in normalised.model_args
    assert _CountingPolicy.size_checks == 1


def test_start_coordinator_leaves_the_callers_options_as_they_were(background_loop, data_dir):
    """The arguments that override the options apply to the coordinator started, not to the
    options object (nor its scheduler settings) the caller may reuse for another one."""
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    options = CoordinatorOptions()
    server, runner = background_loop.run(start_coordinator(
        workers=["127.0.0.1:1"], data_dir=data_dir, include_paths=[str(data_dir)],
        batch_items=7, options=options))
    try:
        assert runner.scheduler.config.max_batch_items == 7
        assert "127.0.0.1:1" in runner.registry.workers
    finally:
        background_loop.run(server.stop(0.5))
    fresh = CoordinatorOptions()
    assert (options.workers, options.data_dir, options.include_paths) == ((), None, ())
    assert options.scheduler.max_batch_items == fresh.scheduler.max_batch_items


def test_task_overrides_are_a_value_of_the_parsed_spec(data_dir):
    """``predict_only`` reaches the tasks as a frozen TaskOverrides read from the parsed spec:
    the task built for the job computes only ``bypass``; without it the task keeps its
    metrics; the spec is not rewritten."""
    import dataclasses

    import pytest

    from evalfleet.server.job_hooks import prepare_task
    from evalfleet.server.planning import load_tasks
    from evalfleet.server.spec import TaskOverrides, parse_spec

    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], predict_only=True)
    parsed = parse_spec(spec)
    assert parsed.task_overrides == TaskOverrides(predict_only=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.task_overrides.predict_only = False  # type: ignore[misc]
    for overrides, metrics in ((TaskOverrides(), ["acc", "acc_norm"]),
                               (parsed.task_overrides, ["bypass"])):
        built = load_tasks(parsed, data_dir, []).tasks["arc_easy"]
        task = prepare_task(built, overrides)
        assert [m.name for m in task.metric_list] == metrics
        assert [m.name for m in built.metric_list] == ["acc", "acc_norm"]  # left as it was
    assert not spec.log_samples and spec.predict_only  # parse_spec left the spec as it was
