"""Shared-prefix trees: a prompt and all of its answers scored in one pass over each.

A user's answers are merged into a trie (TKR's all begin with ``1. ``, many titles with ``The``):
each distinct (prefix, token) is one node, scored once. The prompts run first, as in a prefill
(left-padded, causal); then every prompt's trie nodes that have children run as one block on the
prompts' KV cache: each node attends to its prompt and to its own ancestors only, and its position
continues from the prompt's end by its depth, so every answer token sees exactly what it would see
in ``prompt + answer``, and the log-probabilities equal the per-candidate forward's. A leaf (an
answer's last token) is only predicted, never read, so it is not run. The cost is one prefill plus
the answers' distinct prefixes, and the nodes' attention reads the prompt's keys without the
prompt ever attending to the nodes. Only the positions that predict a node reach the output layer:
the prompt's last (the roots) and each node that was run.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True)
class Trie:
    """One prompt's answers as nodes in creation order (a parent before its children)."""

    parents: list[int]  # -1: a root, predicted by the prompt's last position
    tokens: list[int]
    depths: list[int]
    paths: list[list[int]]  # per answer, its nodes

    @staticmethod
    def of(answers: Sequence[Sequence[int]]) -> "Trie":
        trie = Trie([], [], [], [])
        index: dict[tuple[int, int], int] = {}
        for answer in answers:
            path: list[int] = []
            parent = -1
            for token in answer:
                node = index.get((parent, token))
                if node is None:
                    node = index[(parent, token)] = len(trie.tokens)
                    trie.parents.append(parent)
                    trie.tokens.append(token)
                    trie.depths.append(len(path))
                path.append(node)
                parent = node
            trie.paths.append(path)
        return trie

    @cached_property
    def inner(self) -> list[int]:
        """The nodes with children: the only ones whose hidden state is read."""
        return sorted(set(self.parents) - {-1})


@dataclass(frozen=True)
class Trees:
    """A batch of trees: its prompts (left-padded) and its nodes (right-padded), one row each."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor  # 1 on the prompt's tokens, 0 on padding
    prompt_positions: torch.Tensor
    node_ids: torch.Tensor
    node_positions: torch.Tensor
    # (rows, 1, nodes, prompt width + nodes): True where a node (dim 2) may attend to a key of
    # the prompt's KV cache or of the node block (dim 3).
    node_mask: torch.Tensor
    # The node hidden states the output layer reads, once each: (row, column) in the node block.
    node_rows: torch.Tensor
    node_columns: torch.Tensor
    # Per trie node: which hidden state predicts it (``r`` < rows: row r's prompt's last; then
    # ``rows + k``: the k-th node read) and its token.
    reads: torch.Tensor
    targets: torch.Tensor
    # Per prompt, per answer: its nodes' indices in ``targets``.
    paths: list[list[list[int]]]
    # The requests' tokens: the prompts' and all of the answers'.
    sent: int

    @property
    def tokens(self) -> int:
        """Tokens run through the model, padding included."""
        return self.prompt_ids.numel() + self.node_ids.numel()

    def split(self, scores: list[float]) -> list[list[list[float]]]:
        """Per-node scores (in ``targets`` order) back into prompts and answers."""
        return [[[scores[n] for n in path] for path in answers] for answers in self.paths]


def build_trees(prompts: Sequence[Sequence[int]], tries: Sequence[Trie], pad: int) -> Trees:
    """One row per prompt; ``tries[i]`` holds prompt i's continuations (``Trie.of``)."""
    rows = len(prompts)
    inners = [t.inner for t in tries]
    width = max(map(len, prompts), default=0)
    nodes = max(map(len, inners), default=0)
    prompt_ids = torch.full((rows, width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((rows, width), dtype=torch.long)
    prompt_positions = torch.zeros((rows, width), dtype=torch.long)
    node_ids = torch.full((rows, nodes), pad, dtype=torch.long)
    node_positions = torch.zeros((rows, nodes), dtype=torch.long)
    node_mask = torch.zeros((rows, nodes, width + nodes), dtype=torch.bool)
    node_rows: list[int] = []
    node_columns: list[int] = []
    reads: list[int] = []
    targets: list[int] = []
    paths: list[list[list[int]]] = []
    for r, (prompt, trie, inner) in enumerate(zip(prompts, tries, inners, strict=True)):
        p, m = len(prompt), len(inner)
        prompt_ids[r, width - p :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[r, width - p :] = 1
        prompt_positions[r, width - p :] = torch.arange(p)
        # Every node row sees the prompt (padding rows too: none is fully masked, which is NaN
        # in some attention kernels); nothing reads a padding row.
        node_mask[r, :, width - p : width] = True
        at = {node: k for k, node in enumerate(inner)}
        ancestry = np.zeros((m, m), dtype=bool)  # row k: inner node k's ancestors and itself
        read = {-1: r}
        for k, node in enumerate(inner):
            parent = trie.parents[node]
            if parent != -1:
                ancestry[k] = ancestry[at[parent]]
            ancestry[k, k] = True
            read[node] = rows + len(node_rows)
            node_rows.append(r)
            node_columns.append(k)
        node_mask[r, :m, width : width + m] = torch.from_numpy(ancestry)
        node_ids[r, :m] = torch.tensor([trie.tokens[n] for n in inner], dtype=torch.long)
        depths = [p + trie.depths[n] for n in inner]
        node_positions[r, :m] = torch.tensor(depths, dtype=torch.long)
        first = len(targets)
        for parent, token in zip(trie.parents, trie.tokens, strict=True):
            reads.append(read[parent])
            targets.append(token)
        paths.append([[first + n for n in path] for path in trie.paths])
    return Trees(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        prompt_positions=prompt_positions,
        node_ids=node_ids,
        node_positions=node_positions,
        node_mask=node_mask[:, None],
        node_rows=torch.tensor(node_rows, dtype=torch.long),
        node_columns=torch.tensor(node_columns, dtype=torch.long),
        reads=torch.tensor(reads, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        paths=paths,
        sent=sum(len(p) + sum(map(len, t.paths)) for p, t in zip(prompts, tries, strict=True)),
    )
