"""The transformers engine's shared-prefix tree scoring against the plain per-candidate forward.

The plain forward runs ``prompt + answer`` as its own sequence and reads the answer's
log-probabilities from full logits: what a tree must reproduce, for users of very different
prompt and answer lengths, one-token answers, a single candidate, base model and adapter.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from itdr_batch.dev.tiny import Tiny
from itdr_batch.engines import Engine, Prompt, open_engine
from itdr_batch.engines.tree import build_trees, tree_mask

# float32: the tree and the plain forward differ only in summation order.
FLOAT32 = 1e-4
# bfloat16 rounds every activation (8 mantissa bits): a looser bound on mean log-probabilities.
BFLOAT16 = 0.1


def users() -> tuple[list[list[int]], list[list[list[int]]]]:
    """Prompts of 3 to 180 tokens; answers of 1 to 40 tokens; one user with one candidate."""
    gen = torch.Generator().manual_seed(7)

    def tokens(n: int) -> list[int]:
        return torch.randint(100, 20000, (n,), generator=gen).tolist()

    prompts = [tokens(n) for n in (180, 3, 57, 120, 9)]
    answers = [
        [tokens(n) for n in (12, 1, 40, 7, 12)],
        [tokens(1)],
        [tokens(n) for n in (1, 1, 2, 30)],
        [tokens(n) for n in (5, 25, 3)],
        [tokens(n) for n in (18, 2)],
    ]
    return prompts, answers


def plain(model: Any, prompt: Sequence[int], answer: Sequence[int]) -> list[float]:
    """The answer's log-probabilities from one forward over ``prompt + answer``."""
    ids = torch.tensor([[*prompt, *answer]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    start = len(prompt)
    return [logprobs[start + k - 1, t].item() for k, t in enumerate(answer)]


@pytest.fixture(scope="module")
def bf16_engine(tiny: Tiny) -> Iterator[Engine]:
    engine = open_engine(tiny.config(engine="hf", dtype="bfloat16"))
    yield engine
    engine.close()


def test_the_mask_shows_each_answer_the_prompt_and_its_own_past_only() -> None:
    trees = build_trees([[1, 2]], [[[3, 4, 6], [5, 7]]], pad=0)
    # Columns: prompt 1 2 | answer a: 3 4 | answer b: 5 (last tokens are only predicted).
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert trees.input_ids[0].tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(trees.mask[0, 0], expected)
    assert trees.position_ids[0].tolist() == [0, 1, 2, 3, 2]
    # Read: the prompt's end (both first tokens), then a's tokens 3 and 4, then b's 5.
    pairs = list(zip(trees.rows.tolist(), trees.columns.tolist(), strict=True))
    assert pairs == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert trees.reads.tolist() == [0, 1, 2, 0, 3]
    assert trees.targets.tolist() == [3, 4, 6, 5, 7]
    assert trees.sent == 7


def test_one_token_answers_add_no_tokens() -> None:
    trees = build_trees([[1, 2, 3]], [[[4], [5], [6]]], pad=0)
    assert trees.input_ids.tolist() == [[1, 2, 3]]
    assert trees.reads.tolist() == [0, 0, 0]
    assert trees.targets.tolist() == [4, 5, 6]


def test_padding_is_never_seen_and_never_sees_nothing() -> None:
    mask = tree_mask(torch.tensor([[0, 0, 1, -1, -1]]))[0, 0]
    assert not mask[:3, 3:].any()
    assert mask.any(-1).all()


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "a1"])
def test_tree_scores_equal_the_plain_forward(
    hf_engine: Engine, tiny: Tiny, adapter: str | None
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny.model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, tiny.adapters[0].path)
    prompts, answers = users()
    got = hf_engine.continuation_logprobs([Prompt(p, adapter) for p in prompts], answers)
    for prompt, user_answers, scores in zip(prompts, answers, got, strict=True):
        assert isinstance(scores, list)
        assert [len(s) for s in scores] == [len(a) for a in user_answers]
        for answer, tree in zip(user_answers, scores, strict=True):
            want = plain(model, prompt, answer)
            assert max(abs(a - b) for a, b in zip(tree, want, strict=True)) < FLOAT32


@pytest.mark.slow
def test_a_batch_of_one_and_of_many_give_the_same_scores(hf_engine: Engine) -> None:
    prompts, answers = users()
    together = hf_engine.continuation_logprobs([Prompt(p, "a1") for p in prompts], answers)
    alone = [
        hf_engine.continuation_logprobs([Prompt(p, "a1")], [a])[0]
        for p, a in zip(prompts, answers, strict=True)
    ]
    for x, y in zip(together, alone, strict=True):
        assert isinstance(x, list)
        assert isinstance(y, list)
        flat_x = [v for s in x for v in s]
        flat_y = [v for s in y for v in s]
        assert max(abs(a - b) for a, b in zip(flat_x, flat_y, strict=True)) < FLOAT32


@pytest.mark.slow
def test_bfloat16_trees_follow_the_float32_scores(hf_engine: Engine, bf16_engine: Engine) -> None:
    prompts, answers = users()
    wide = hf_engine.continuation_logprobs([Prompt(p, "a1") for p in prompts], answers)
    narrow = bf16_engine.continuation_logprobs([Prompt(p, "a1") for p in prompts], answers)
    for x, y in zip(wide, narrow, strict=True):
        assert isinstance(x, list)
        assert isinstance(y, list)
        for a, b in zip(x, y, strict=True):
            assert abs(sum(a) / len(a) - sum(b) / len(b)) < BFLOAT16
