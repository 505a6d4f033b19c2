"""The demo's tokenizer, trained on the bundled sample: Qwen's markers, single-token ratings,
exact round trips, byte-identical retraining, reuse, and a tiny model built on it."""

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from itdr_batch.datasets import SAMPLE, read_movielens
from itdr_batch.dev.tiny import build_tiny
from itdr_batch.dev.tokenizer import IM_END, IM_START, sample_texts, train_tokenizer
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.tasks import Task


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(sample_texts())


@pytest.fixture(scope="module")
def folder(texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def tok(folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(folder)


def encode(tok: Any, text: str) -> list[int]:
    ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
    return ids


def test_sample_texts_fill_domain_words_and_leave_out_slots_and_markers(texts: list[str]) -> None:
    assert "Toy Story (1995)" in texts
    assert "Adventure|Animation|Children|Comedy|Fantasy" in texts
    assert any("Given a user's movie watching records" in text for text in texts)
    assert any("You are Qwen" in text for text in texts)
    assert not [text for text in texts if "{" in text or "<|" in text]


def test_loads_as_a_fast_tokenizer_with_qwens_markers(tok: Any) -> None:
    assert tok.is_fast
    assert tok.bos_token is None
    assert (tok.eos_token, tok.pad_token) == (IM_END, "<|endoftext|>")
    for marker in (IM_START, IM_END):
        assert encode(tok, marker) == [tok.convert_tokens_to_ids(marker)]
    assert tok("Toy Story")["input_ids"] == encode(tok, "Toy Story")


def test_qwen_prompts_round_trip(tok: Any) -> None:
    data = read_movielens(SAMPLE)
    assert data.interactions is not None
    users = data.interactions.select("user_id").unique().sort("user_id").head(5)
    config = PromptConfig(task=Task.TKR, chat="qwen")
    prompts = build_prompts(users, data.interactions, data.items, config)["prompt"]
    assert prompts.null_count() == 0
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    for prompt in prompts:
        ids = encode(tok, prompt)
        assert tok.decode(ids) == prompt
        assert ids[0] == start
        assert (ids.count(start), ids.count(end)) == (3, 2)


@pytest.mark.parametrize("rating", ["1", "2", "3", "4", "5"])
def test_ratings_are_single_tokens(tok: Any, rating: str) -> None:
    assert len(encode(tok, rating)) == 1


@pytest.mark.parametrize(
    "text",
    ["Les Misérables (1995)", "Amélie (2001)", "中文标题 🙂", "tab\there", "x\u2028y", " 12 "],
)
def test_any_text_round_trips(tok: Any, text: str) -> None:
    assert tok.decode(encode(tok, text)) == text


def test_retraining_serially_is_byte_identical(
    texts: list[str], folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rayon the pair counts are summed in another order; every trainer run also has
    fresh hash seeds, so its maps iterate in another order."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    again = train_tokenizer(texts, tmp_path / "t")
    assert (again / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def test_same_texts_reuse_the_folder_and_others_retrain(texts: list[str], tmp_path: Path) -> None:
    out = train_tokenizer(texts[:500], tmp_path / "t", vocab_size=512)
    trained = (out / "tokenizer.json").read_bytes()
    (out / "mark").touch()
    assert train_tokenizer(texts[:500], out, vocab_size=512) == out
    assert (out / "mark").exists()
    train_tokenizer(texts[:400], out, vocab_size=512)
    assert not (out / "mark").exists()
    assert (out / "tokenizer.json").read_bytes() != trained
    assert len(AutoTokenizer.from_pretrained(train_tokenizer(texts[:400], out, 300))) == 300


def test_a_tiny_model_builds_on_it(folder: Path, tok: Any, tmp_path: Path) -> None:
    tiny = build_tiny(tmp_path, folder, adapters=1)
    config = json.loads((tiny.model / "config.json").read_text())
    assert config["vocab_size"] == len(tok) == 4096
    assert config["eos_token_id"] == tok.convert_tokens_to_ids(IM_END)
    assert config["pad_token_id"] == tok.pad_token_id
    assert config["bos_token_id"] is None
    assert len(AutoTokenizer.from_pretrained(tiny.model)) == len(tok)
    assert [spec.name for spec in tiny.adapters] == ["a1"]


def test_prompts_are_compact(tok: Any) -> None:
    """Training on the templates makes their words single tokens, as Qwen's vocabulary does."""
    for word in (" recommendation", " chronological", " movie", " watching", "system", "user"):
        assert len(encode(tok, word)) == 1, word
