"""A compressed token trie (radix tree) over model inputs, for forwarding shared prefixes once.

Pure Python: no torch. ``hf_score`` walks it, forwarding each shared edge once and scoring the
remaining suffixes as batched rows on top of the cached prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class TrieNode:
    """An edge of ``tokens`` at absolute positions ``[start, start + len(tokens))`` (compared
    and hashed by identity: an edge is itself, not its tokens)."""

    start: int
    tokens: list[int]
    children: list[TrieNode] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)  # ids of inputs ending at this node
    n_paths: int = 0  # leaves below (distinct maximal inputs)

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


def build_trie(inputs: Sequence[Sequence[int]]) -> TrieNode:
    """The radix tree of ``inputs`` (pairwise distinct token sequences)."""
    order = sorted(range(len(inputs)), key=lambda i: tuple(inputs[i]))
    root = TrieNode(0, [])
    _build(root, order, inputs, 0)
    return root


def _build(node: TrieNode, idxs: list[int], inputs: Sequence[Sequence[int]], depth: int) -> None:
    i = 0
    while i < len(idxs):
        seq = inputs[idxs[i]]
        if len(seq) == depth:
            node.inputs.append(idxs[i])
            i += 1
            continue
        tok = seq[depth]
        j = i + 1
        while j < len(idxs) and len(inputs[idxs[j]]) > depth and inputs[idxs[j]][depth] == tok:
            j += 1
        first, last = inputs[idxs[i]], inputs[idxs[j - 1]]
        lcp, limit = depth + 1, min(len(first), len(last))
        while lcp < limit and first[lcp] == last[lcp]:
            lcp += 1
        child = TrieNode(depth, list(first[depth:lcp]))
        _build(child, idxs[i:j], inputs, lcp)
        node.children.append(child)
        i = j
    node.n_paths = sum(c.n_paths for c in node.children) or (1 if node.inputs else 0)


def count_nodes(node: TrieNode) -> int:
    """Token positions in the trie: the floor of positions any prefix-sharing scheme computes."""
    return len(node.tokens) + sum(count_nodes(c) for c in node.children)


def subtree_inputs(node: TrieNode) -> list[int]:
    """Ids of every input ending at or below ``node``."""
    out = list(node.inputs)
    for child in node.children:
        out.extend(subtree_inputs(child))
    return out
