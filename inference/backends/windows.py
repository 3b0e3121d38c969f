"""lm-eval's rolling token windows (``get_rolling_token_windows`` + ``make_disjoint_window``).

With ``context_len=1`` the predictions are non-overlapping windows of ``max_len`` tokens, each
conditioned on up to ``max_len`` preceding tokens; the first is conditioned on ``prefix_token``.
"""

from __future__ import annotations


def rolling_windows(tokens: list[int], prefix_token: int,
                    max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint ``(context, predicted)`` windows covering every token of ``tokens`` once."""
    if max_len < 1:
        raise ValueError("max_len must be >= 1")
    n = len(tokens)
    if n == 0:
        return []
    first = min(max_len, n)
    windows = [([prefix_token], tokens[:first])]
    predicted = first
    while predicted < n:
        pred_len = min(n - predicted, max_len)
        end = predicted + pred_len
        context = tokens[end - max_len - 1: end - 1]
        # disjoint: drop the context tokens that are also predicted in this window
        context = context[: len(context) - (pred_len - 1)]
        windows.append((context, tokens[end - pred_len: end]))
        predicted = end
    return windows
