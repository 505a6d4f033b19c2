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
from itdr_batch.engines.hf import batches
from itdr_batch.engines.tree import Trie, build_trees

# float32: the tree and the plain forward differ only in summation order.
FLOAT32 = 1e-4
# bfloat16 rounds every activation (8 mantissa bits): mean log-probabilities within 0.1 or 2% of
# their magnitude (a one-token answer at -14 is off by ~0.15).
BFLOAT16 = 0.1
BFLOAT16_RELATIVE = 0.02


def users() -> tuple[list[list[int]], list[list[list[int]]]]:
    """Prompts of 3 to 180 tokens; answers of 1 to 40 tokens; one user with one candidate; one
    whose answers share prefixes (a repeated answer, and one that is another's prefix)."""
    gen = torch.Generator().manual_seed(7)

    def tokens(n: int) -> list[int]:
        return torch.randint(100, 20000, (n,), generator=gen).tolist()

    prompts = [tokens(n) for n in (180, 3, 57, 120, 9, 40)]
    stem = tokens(6)
    answers = [
        [tokens(n) for n in (12, 1, 40, 7, 12)],
        [tokens(1)],
        [tokens(n) for n in (1, 1, 2, 30)],
        [tokens(n) for n in (5, 25, 3)],
        [tokens(n) for n in (18, 2)],
        [stem + tokens(3), stem[:2] + tokens(4), stem, stem + tokens(3), stem[:1], stem],
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


def test_the_mask_shows_each_node_its_prompt_and_its_ancestors_only() -> None:
    trees = build_trees([[1, 2]], [Trie.of(a) for a in [[[3, 4, 6], [5, 7]]]], pad=0)
    # The node block: a's 3 and 4, b's 5 (last tokens are only predicted); keys: prompt 1 2,
    # then the nodes.
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert trees.prompt_ids.tolist() == [[1, 2]]
    assert trees.node_ids.tolist() == [[3, 4, 5]]
    assert torch.equal(trees.node_mask[0, 0], expected)
    assert trees.node_positions.tolist() == [[2, 3, 2]]
    # Read: the prompt's end (both first tokens), then a's tokens 3 and 4, then b's 5.
    assert trees.reads.tolist() == [0, 1, 2, 0, 3]
    assert trees.targets.tolist() == [3, 4, 6, 5, 7]
    assert trees.sent == 7


def test_one_token_answers_add_no_tokens() -> None:
    trees = build_trees([[1, 2, 3]], [Trie.of(a) for a in [[[4], [5], [6]]]], pad=0)
    assert trees.node_ids.shape == (1, 0)
    assert trees.tokens == 3
    assert trees.reads.tolist() == [0, 0, 0]
    assert trees.targets.tolist() == [4, 5, 6]


def test_answers_sharing_a_prefix_share_its_nodes() -> None:
    trees = build_trees(
        [[1, 2]], [Trie.of(a) for a in [[[5, 6, 7], [5, 6, 8], [5, 6, 7], [9], [5]]]], pad=0
    )
    # Nodes: 5, 6, 7, 8, 9; only 5 and 6 have children, so only they are run.
    assert trees.node_ids.tolist() == [[5, 6]]
    assert trees.node_positions.tolist() == [[2, 3]]
    assert trees.targets.tolist() == [5, 6, 7, 8, 9]
    assert trees.reads.tolist() == [0, 1, 2, 2, 0]
    assert trees.paths == [[[0, 1, 2], [0, 1, 3], [0, 1, 2], [4], [0]]]
    scores = trees.split([0.1, 0.2, 0.3, 0.4, 0.5])
    assert scores == [[[0.1, 0.2, 0.3], [0.1, 0.2, 0.4], [0.1, 0.2, 0.3], [0.5], [0.1]]]
    assert trees.sent == 2 + 3 + 3 + 3 + 1 + 1


def test_padding_is_never_seen_and_never_sees_nothing() -> None:
    trees = build_trees([[1, 2, 3, 4], [1]], [Trie.of(a) for a in [[[5, 6, 7]], [[8, 9]]]], pad=0)
    # The short prompt is left-padded: [pad pad pad 1]; its node block: [8, pad].
    assert trees.prompt_mask[1].tolist() == [0, 0, 0, 1]
    short = trees.node_mask[1, 0]
    assert not short[:, :3].any()  # the prompt's padding
    assert not short[0, 5]  # the padding node
    assert short.any(-1).all()
    # Reads: row 0's prompt end, row 1's, then row 0's nodes 5 and 6, row 1's 8.
    assert trees.reads.tolist() == [0, 2, 3, 1, 4]


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
            mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
            assert abs(mean_a - mean_b) < max(BFLOAT16, BFLOAT16_RELATIVE * abs(mean_a))


def test_batches_keep_one_adapter_and_cut_before_an_outlier_pads_the_rest() -> None:
    prompts = [Prompt([1], "a1")] * 6 + [Prompt([1], None)] * 2
    lengths = [100, 100, 101, 102, 400, 100, 100, 100]
    got = list(batches(prompts, lengths, list(range(8)), budget=1000))
    # The base model's two, then the adapter's: four similar ones, and the 400-token outlier
    # alone (with them it would be 5 x 400 tokens, three quarters padding).
    assert got == [[6, 7], [0, 1, 5, 2, 3], [4]]
    # The budget counts padded tokens: at most two 400-token rows in 1000.
    assert list(batches([Prompt([1])] * 3, [400] * 3, [0, 1, 2], budget=1000)) == [[0, 1], [2]]
