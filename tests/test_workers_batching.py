"""Unit tests of batch cutting: order kept, kinds apart, prefix groups kept whole, retries
first, and the bytes on the wire equal to the request message protobuf would build."""

from __future__ import annotations

import pytest

from evalfleet.server.batching import kind_queues, shares_prefix
from evalfleet.server.workers import WorkItem
from evalfleet.v1 import inference_pb2 as pb


def _ll(i: int, context: str) -> WorkItem:
    return WorkItem(f"id{i}", "loglikelihood", (context, f" choice {i}"))


def _drain(queue, size: int) -> list[list[str]]:
    out = []
    while (batch := queue.take(size)) is not None:
        out.append([queue.ids[i] for i in batch.indices])
    return out


def test_batches_keep_order_and_separate_kinds():
    items = [_ll(i, f"{i} doc") for i in range(5)]
    items.insert(2, WorkItem("r", "loglikelihood_rolling", ("a whole text",)))
    queues = kind_queues(items)
    assert [q.kind for q in queues] == ["loglikelihood", "loglikelihood_rolling"]
    assert _drain(queues[0], 2) == [["id0", "id1"], ["id2", "id3"], ["id4"]]
    assert _drain(queues[1], 2) == [["r"]]


def test_full_batch_grows_to_keep_a_shared_prefix_group_together():
    shots = "Q: one?\nA: 1\n\nQ: two?\nA: 2\n\n" * 10
    group = [_ll(i, shots + f"Q: doc {i}?\nA:") for i in range(6)]
    other = [_ll(10 + i, f"unrelated {i}") for i in range(3)]
    (queue,) = kind_queues([*group, *other])
    assert [len(b) for b in _drain(queue, 4)] == [6, 3]


def test_group_starts_are_shares_prefix_of_neighbours():
    """The queue's inlined test (with its shortcut for a context object shared by a
    document's choices) agrees with shares_prefix on every neighbouring pair."""
    shared = "Question: which?\nAnswer:"
    contexts = [shared, shared, shared, "", "", "x", "Question: which?\nAnswer: no",
                "Question: which?\nAnswer:", "other", "other"]
    items = [_ll(i, c) for i, c in enumerate(contexts)]
    (queue,) = kind_queues(items)
    starts = [i for i in range(1, len(items)) if queue._next_start[i] == i]
    assert starts == [i for i in range(1, len(items))
                      if not shares_prefix(contexts[i - 1], contexts[i])]


def test_stretch_caps_a_long_group():
    shots = "shared few-shot block " * 20
    (queue,) = kind_queues([_ll(i, shots + str(i)) for i in range(10)], stretch=2)
    # A group longer than stretch x size is cut at the asked size; its last part is taken
    # whole when that stays within stretch x size.
    assert [len(b) for b in _drain(queue, 2)] == [2, 2, 2, 4]
    (queue,) = kind_queues([_ll(i, shots + str(i)) for i in range(10)], stretch=5)
    assert [len(b) for b in _drain(queue, 2)] == [10]


def test_byte_limit_cuts_batches():
    items = [_ll(i, "x" * 1000 + str(i)) for i in range(10)]
    (queue,) = kind_queues(items, max_bytes=2500, stretch=1)
    assert [len(b) for b in _drain(queue, 100)] == [2, 2, 2, 2, 2]


def test_retries_go_first_and_split():
    (queue,) = kind_queues([_ll(i, f"{i} doc") for i in range(8)])
    first = queue.take(4)
    queue.requeue(list(first.indices), split=True)
    assert queue.pending == 8
    assert [queue.ids[i] for i in queue.take(4).indices] == ["id0", "id1"]
    assert [queue.ids[i] for i in queue.take(4).indices] == ["id2", "id3"]
    assert [queue.ids[i] for i in queue.take(4).indices] == ["id4", "id5", "id6", "id7"]
    assert queue.take(4) is None and queue.pending == 0


def test_payload_is_the_request_message_protobuf_builds():
    items = [_ll(i, f"ctx {i}") for i in range(3)]
    gen = WorkItem("g", "generate_until", ("prompt",),
                   pb.GenerationParams(until=["\n"], max_gen_toks=7), chat_messages=True)
    ll, gq = kind_queues([*items, gen])
    batch = ll.take(10)
    expected = pb.LoglikelihoodRequest(items=[
        pb.LoglikelihoodItem(request_id=f"id{i}", context=f"ctx {i}", continuation=f" choice {i}")
        for i in range(3)])
    assert pb.LoglikelihoodRequest.FromString(batch.payload) == expected
    parsed = pb.GenerateUntilRequest.FromString(gq.take(10).payload)
    assert parsed.items[0].params.max_gen_toks == 7 and parsed.items[0].chat_messages


def _resolved(payload: bytes) -> list[tuple[str, str, str]]:
    """(id, context, continuation) of each item, as the worker reads the message."""
    from evalfleet.inference.server import _loglikelihood_arguments

    items = pb.LoglikelihoodRequest.FromString(payload).items
    return [(item.request_id, *args)
            for item, args in zip(items, _loglikelihood_arguments(items), strict=True)]


def test_a_documents_choices_carry_their_context_once():
    """Choices after the first leave the shared context out (same_context); a batch that
    starts inside a document, fresh or retried, or skips one of its choices, sends the
    context whole where the previous choice is not right before it."""
    contexts = ["doc A"] * 4 + ["doc B"] * 3 + ["", ""]
    items = [_ll(i, c) for i, c in enumerate(contexts)]
    expected = [(w.request_id, *w.arguments) for w in items]
    (queue,) = kind_queues(items, stretch=1)
    assert queue.same_context.tolist() == [False, True, True, True, False, True, True,
                                           False, False]
    whole = pb.LoglikelihoodRequest.FromString(kind_queues(items)[0].take(20).payload)
    assert [i.same_context for i in whole.items] == queue.same_context.tolist()
    assert [i.context for i in whole.items] == ["doc A", "", "", "", "doc B", "", "", "", ""]
    # Cut inside a document (stretch 1): the next batch starts with its context.
    first, second = queue.take(3), queue.take(3)
    assert list(second.indices) == [3, 4, 5]
    assert _resolved(first.payload) == expected[:3] and _resolved(second.payload) == expected[3:6]
    assert not pb.LoglikelihoodRequest.FromString(second.payload).items[0].same_context
    # A retry of scattered requests: each is whole unless its predecessor comes just before.
    queue.requeue([1, 2, 5, 8])
    retry = queue.take(10)
    assert _resolved(retry.payload) == [expected[i] for i in (1, 2, 5, 8)]
    assert [i.same_context for i in pb.LoglikelihoodRequest.FromString(retry.payload).items] \
        == [False, True, False, False]
    # For a worker that does not read same_context, every item is whole.
    (queue,) = kind_queues(items)
    plain = pb.LoglikelihoodRequest.FromString(queue.take(20, same_context=False).payload)
    assert [(i.request_id, i.context, i.continuation) for i in plain.items] == expected
    assert not any(i.same_context for i in plain.items)
    queue.requeue([1, 2])
    plain = pb.LoglikelihoodRequest.FromString(queue.take(20, same_context=False).payload)
    assert [i.context for i in plain.items] == ["doc A", "doc A"]


def test_worker_refuses_same_context_without_a_previous_context():
    from evalfleet.common.errors import InvalidArgumentError
    from evalfleet.inference.server import _loglikelihood_arguments

    first = [pb.LoglikelihoodItem(request_id="a", continuation=" x", same_context=True)]
    with pytest.raises(InvalidArgumentError, match=r"items\[0\]\.same_context.*first item"):
        _loglikelihood_arguments(first)
    both = [pb.LoglikelihoodItem(request_id="a", context="c", continuation=" x"),
            pb.LoglikelihoodItem(request_id="b", context="c", continuation=" y",
                                 same_context=True)]
    with pytest.raises(InvalidArgumentError, match=r"items\[1\]\.same_context.*own context"):
        _loglikelihood_arguments(both)


def test_shares_prefix():
    assert shares_prefix("abcdef", "abcxyz")
    assert not shares_prefix("abcdef", "xbcdef")
    assert not shares_prefix("", "x")


def _response(ids, error_at=None) -> bytes:
    results = []
    for j, rid in enumerate(ids):
        if j == error_at:
            results.append(pb.TokenScores(request_id=rid, error=pb.ItemError(
                message="too long", retryable=False)))
        else:
            results.append(pb.TokenScores(request_id=rid, logprobs=[-0.5, -1.5],
                                          greedy=[True, False]))
    return pb.LoglikelihoodResponse(results=results, cost=pb.BatchCost(
        positions_computed=7, compute_seconds=0.25)).SerializeToString(), results


def test_split_response_keeps_answer_bytes_and_parses_errors():
    import numpy as np

    from evalfleet.server.wire import split_response

    (queue,) = kind_queues([_ll(i, f"{i} doc") for i in range(6)])
    batch = queue.take(4)  # id0..id3
    raw, results = _response(["id0", "id1", "id2", "id3"], error_at=2)
    split = split_response(raw, "loglikelihood", queue.expected, batch.index_array())
    assert split.answered.tolist() == [0, 1, 3]
    assert split.answers == [results[j].SerializeToString() for j in (0, 1, 3)]
    assert [(j, e.message, e.retryable) for j, e in split.errors] == [(2, "too long", False)]
    assert split.cost.positions_computed == 7
    retry = np.array([4, 5])
    raw, _ = _response(["id4", "id5"])
    assert split_response(raw, "loglikelihood", queue.expected, retry).answered.tolist() == [0, 1]


@pytest.mark.parametrize("ids", [["id0", "id1", "id9"], ["id0", "id2", "id1"], ["id0", "id1"],
                                 ["id0", "id1", "id2", "id3"]])
def test_split_response_refuses_answers_that_do_not_match_the_batch(ids):
    from evalfleet.server.wire import MalformedResponseError, split_response

    (queue,) = kind_queues([_ll(i, f"{i} doc") for i in range(6)])
    batch = queue.take(3)
    raw, _ = _response(ids)
    with pytest.raises(MalformedResponseError):
        split_response(raw, "loglikelihood", queue.expected, batch.index_array())


def test_scheduler_and_registry_close_even_when_woken_at_the_same_moment():
    """close() used to hang: a wake racing the cancel made asyncio.wait_for (Python 3.11)
    swallow the cancellation, and the scheduler loop ran on."""
    import asyncio

    from evalfleet.server.registry import WorkerRegistry
    from evalfleet.server.scheduler import Scheduler

    async def main():
        for _ in range(20):
            registry = WorkerRegistry()
            scheduler = Scheduler(registry)
            scheduler.start()
            await asyncio.sleep(0)
            scheduler.wake()
            closing = asyncio.ensure_future(scheduler.close())
            done, _ = await asyncio.wait({closing}, timeout=5)
            assert closing in done, "Scheduler.close() did not return"
            registry.changed()
            await asyncio.wait_for(registry.close(), 5)

    asyncio.run(main())
