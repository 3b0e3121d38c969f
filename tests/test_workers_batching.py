"""Unit tests of batch cutting: order kept, kinds apart, prefix groups kept whole."""

from __future__ import annotations

from evalfleet.server.workers import WorkItem, make_batches, shares_prefix


def _ll(i: int, context: str) -> WorkItem:
    return WorkItem(f"id{i}", "loglikelihood", (context, f" choice {i}"))


def test_batches_keep_order_and_separate_kinds():
    items = [_ll(i, f"{i} doc") for i in range(5)]
    items.insert(2, WorkItem("r", "loglikelihood_rolling", ("a whole text",)))
    batches = make_batches(items, max_items=2)
    assert [b.request_type for b in batches] == ["loglikelihood"] * 3 + ["loglikelihood_rolling"]
    assert [w.request_id for b in batches[:3] for w in b.items] == [f"id{i}" for i in range(5)]


def test_full_batch_grows_to_keep_a_shared_prefix_group_together():
    shots = "Q: one?\nA: 1\n\nQ: two?\nA: 2\n\n" * 10
    group = [_ll(i, shots + f"Q: doc {i}?\nA:") for i in range(6)]
    other = [_ll(10 + i, f"unrelated {i}") for i in range(3)]
    batches = make_batches([*group, *other], max_items=4)
    assert [len(b.items) for b in batches] == [6, 3]


def test_stretch_caps_a_long_group():
    shots = "shared few-shot block " * 20
    group = [_ll(i, shots + str(i)) for i in range(10)]
    batches = make_batches(group, max_items=2, stretch=2)
    assert [len(b.items) for b in batches] == [4, 4, 2]


def test_shares_prefix():
    assert shares_prefix(_ll(0, "abcdef"), _ll(1, "abcxyz"))
    assert not shares_prefix(_ll(0, "abcdef"), _ll(1, "xbcdef"))
    assert not shares_prefix(_ll(0, ""), _ll(1, "x"))
