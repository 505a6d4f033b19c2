"""Shared-prefix trees: a prompt and all of its answers scored in one sequence.

A user's row is the prompt's tokens followed by every candidate's answer tokens but the last (a
last token is only predicted, never read: nothing needs its hidden state). Each answer attends to
the prompt and to its own earlier tokens only, and its positions continue from the prompt's end,
so every answer token sees exactly what it would see in ``prompt + answer``: the log-probabilities
equal the per-candidate forward's, for the cost of one pass over the prompt plus the answers.
Only the positions that predict an answer token are needed from the output layer: the prompt's
last position (every answer's first token) and each answer token in the row.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Segment of prompt tokens and of padding in a row; answer j is segment j + 1.
PROMPT, PADDING = 0, -1


@dataclass(frozen=True)
class Trees:
    """A batch of trees, one row per prompt, right-padded to the longest row."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    # (rows, 1, width, width), True where a query (dim 2) may attend to a key (dim 3).
    mask: torch.Tensor
    # The hidden states the output layer reads: (row, column) of each, once.
    rows: torch.Tensor
    columns: torch.Tensor
    # Per answer token: which of those hidden states predicts it, and the token.
    reads: torch.Tensor
    targets: torch.Tensor
    # Per prompt, per answer: the number of its tokens (their scores follow in that order).
    lengths: list[list[int]]
    # The requests' tokens: the prompts' and all of the answers'.
    sent: int

    @property
    def tokens(self) -> int:
        """Tokens in the forward pass, padding included."""
        return self.input_ids.numel()

    def split(self, scores: list[float]) -> list[list[list[float]]]:
        """Flat per-token scores (in ``targets`` order) back into prompts and answers."""
        out: list[list[list[float]]] = []
        pos = 0
        for answers in self.lengths:
            mine = []
            for n in answers:
                mine.append(scores[pos : pos + n])
                pos += n
            out.append(mine)
        return out


def row_length(prompt: Sequence[int], answers: Sequence[Sequence[int]]) -> int:
    """A tree's tokens: the prompt's plus every answer's but its last."""
    return len(prompt) + sum(max(len(a) - 1, 0) for a in answers)


def build_trees(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[Sequence[int]]], pad: int
) -> Trees:
    """One row per prompt; ``answers[i]`` are prompt i's continuations (each may be empty)."""
    sizes = [row_length(p, a) for p, a in zip(prompts, answers, strict=True)]
    width = max(sizes, default=0)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    positions = torch.zeros((len(prompts), width), dtype=torch.long)
    segments = torch.full((len(prompts), width), PADDING, dtype=torch.long)
    rows: list[int] = []
    columns: list[int] = []
    reads: list[int] = []
    targets: list[int] = []
    lengths: list[list[int]] = []
    for r, (prompt, user_answers) in enumerate(zip(prompts, answers, strict=True)):
        p = len(prompt)
        ids[r, :p] = torch.tensor(prompt, dtype=torch.long)
        positions[r, :p] = torch.arange(p)
        segments[r, :p] = PROMPT
        # The prompt's last position predicts the first token of every answer.
        rows.append(r)
        columns.append(p - 1)
        prompt_end = len(rows) - 1
        start = p
        for j, answer in enumerate(user_answers):
            n = max(len(answer) - 1, 0)
            ids[r, start : start + n] = torch.tensor(list(answer[:n]), dtype=torch.long)
            positions[r, start : start + n] = torch.arange(p, p + n)
            segments[r, start : start + n] = j + 1
            for k, token in enumerate(answer):
                if k == 0:
                    reads.append(prompt_end)
                else:
                    # Token k is predicted by the hidden state of token k - 1.
                    rows.append(r)
                    columns.append(start + k - 1)
                    reads.append(len(rows) - 1)
                targets.append(token)
            start += n
        lengths.append([len(a) for a in user_answers])
    return Trees(
        input_ids=ids,
        position_ids=positions,
        mask=tree_mask(segments),
        rows=torch.tensor(rows, dtype=torch.long),
        columns=torch.tensor(columns, dtype=torch.long),
        reads=torch.tensor(reads, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        lengths=lengths,
        sent=sum(len(p) + sum(map(len, a)) for p, a in zip(prompts, answers, strict=True)),
    )


def tree_mask(segments: torch.Tensor) -> torch.Tensor:
    """Causal, and a key outside the prompt is seen only from its own segment.

    Padding sees the prompt and itself, so no query row is fully masked (a fully masked softmax
    row is NaN in some attention kernels); nothing real ever sees padding.
    """
    order = torch.arange(segments.shape[1])
    causal = order[None, :] <= order[:, None]
    keys, queries = segments[:, None, :], segments[:, :, None]
    visible = (keys == PROMPT) | (keys == queries)
    return (causal[None] & visible)[:, None]
