"""Adapters are validated completely before any output, whatever the engine: every LoRA tensor
their config promises, readable, floating point, of the configured rank and the model's sizes.

PEFT only warns about a missing tensor and initialises it at random, so two runs with one run id
would score differently; these adapters are refused with a one-line error instead."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import Canonical, WriteJob
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.dev.tiny import Tiny
from itdr_batch.engines import AdapterSpec, ModelError, load_model
from itdr_batch.engines.adapters import load_adapter

Tensors = dict[str, np.ndarray]
WEIGHTS = "adapter_model.safetensors"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
# The first tensor in module order (model.layers.0.mlp before model.layers.0.self_attn).
FIRST = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
# The tiny adapters: LoRA on 7 linear modules of 2 layers, rank 8.
TENSORS = 7 * 2 * 2


def broken(
    tiny: Tiny,
    folder: Path,
    tensors: Callable[[Tensors], Tensors] | None = None,
    **config: object,
) -> AdapterSpec:
    """A copy of adapter a1 with its tensors rewritten and its adapter_config.json keys set."""
    shutil.copytree(tiny.adapters[0].path, folder)
    if tensors is not None:
        save_file(tensors(load_file(folder / WEIGHTS)), folder / WEIGHTS)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return AdapterSpec(name="bad", path=folder)


def without(module: str) -> Callable[[Tensors], Tensors]:
    return lambda tensors: {k: v for k, v in tensors.items() if f".{module}." not in k}


def truncate(folder: Path) -> None:
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def as_int(tensors: Tensors) -> Tensors:
    return {k: v.astype(np.int32) if k == Q_A else v for k, v in tensors.items()}


def check(tiny: Tiny, spec: AdapterSpec) -> None:
    load_model(tiny.config(adapters=[spec]))


# (case, adapter_config.json keys, tensor rewrite, the error's words)
BROKEN: list[tuple[str, dict[str, object], Callable[[Tensors], Tensors] | None, str]] = [
    ("no q_proj weights", {}, without("q_proj"), f"{Q_A} is missing (4 tensors"),
    ("r 16, rank-8 weights", {"r": 16}, None, f"{FIRST} has rank 8, adapter_config.json's is 16"),
    ("integer dtype", {}, as_int, f"{Q_A} has dtype I32, not floating point"),
    (
        "weights the config does not target",
        {"target_modules": ["k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        None,
        f"{Q_A} is for module model.layers.0.self_attn.q_proj, which target_modules does not",
    ),
]


@pytest.mark.parametrize(
    ("case", "config", "tensors", "message"), BROKEN, ids=[c[0] for c in BROKEN]
)
def test_a_broken_adapter_is_refused_naming_the_first_bad_tensor(
    tiny: Tiny,
    tmp_path: Path,
    case: str,
    config: dict[str, object],
    tensors: Callable[[Tensors], Tensors] | None,
    message: str,
) -> None:
    spec = broken(tiny, tmp_path / "bad", tensors, **config)
    with pytest.raises(ModelError) as error:
        check(tiny, spec)
    text = str(error.value)
    assert text.startswith(f"adapter 'bad': {spec.path / WEIGHTS}: tensor "), text
    assert message in text
    assert "\n" not in text


def test_every_bad_tensor_is_counted(tiny: Tiny, tmp_path: Path) -> None:
    spec = broken(tiny, tmp_path / "r16", None, r=16)
    with pytest.raises(ModelError, match=rf"\({TENSORS} tensors missing or wrong in all\)$"):
        check(tiny, spec)


def test_a_truncated_file_is_refused_without_a_traceback(tiny: Tiny, tmp_path: Path) -> None:
    spec = broken(tiny, tmp_path / "cut")
    truncate(spec.path)
    with pytest.raises(
        ModelError, match=r"adapter 'bad'.*adapter_model\.safetensors is not a read"
    ):
        check(tiny, spec)


def test_a_complete_adapter_passes(tiny: Tiny) -> None:
    assert [a.name for a in load_model(tiny.config())] == ["a1", "a2"]


def test_regex_target_modules_are_matched_against_the_model_module_names(
    tiny: Tiny, tmp_path: Path
) -> None:
    """PEFT matches a string target_modules against whole module names (re.fullmatch); the names
    come from the model's safetensors headers, so no model is loaded."""
    every = r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"
    check(tiny, broken(tiny, tmp_path / "every", target_modules=every))
    layer1_q = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    drop = broken(
        tiny,
        tmp_path / "drop",
        lambda t: {k: v for k, v in t.items() if k != layer1_q},
        target_modules=every,
    )
    with pytest.raises(ModelError, match=rf"tensor {layer1_q} is missing$"):
        check(tiny, drop)
    attention = r".*self_attn\.[qkvo]_proj"
    with pytest.raises(ModelError, match=r"mlp\.down_proj, which target_modules does not select"):
        check(tiny, broken(tiny, tmp_path / "attention", target_modules=attention))
    with pytest.raises(ModelError, match=r"match no module of the model: the adapter does not fit"):
        check(tiny, broken(tiny, tmp_path / "none", target_modules=r".*\.c_attn"))


def test_layers_to_transform_narrows_what_is_required(tiny: Tiny, tmp_path: Path) -> None:
    def layer0(tensors: Tensors) -> Tensors:
        return {k: v for k, v in tensors.items() if ".layers.0." in k}

    check(tiny, broken(tiny, tmp_path / "layer0", layer0, layers_to_transform=[0]))
    check(
        tiny,
        broken(tiny, tmp_path / "pattern", layer0, layers_to_transform=0, layers_pattern="layers"),
    )
    with pytest.raises(ModelError, match=r"layers\.1\.mlp\.down_proj\.lora_A\.weight is missing"):
        check(tiny, broken(tiny, tmp_path / "both", layer0, layers_to_transform=[0, 1]))


def test_rank_pattern_gives_modules_their_own_rank(tiny: Tiny, tmp_path: Path) -> None:
    def q_rank4(tensors: Tensors) -> Tensors:
        return {
            k: (v[:4] if ".lora_A." in k else v[:, :4]) if ".q_proj." in k else v
            for k, v in tensors.items()
        }

    spec = broken(tiny, tmp_path / "q4", q_rank4, rank_pattern={"q_proj": 4})
    check(tiny, spec)
    assert load_adapter(spec, allow_pickle=False).rank == 8
    wide = broken(tiny, tmp_path / "q16", None, rank_pattern={"self_attn.q_proj": 16})
    # vLLM's max_lora_rank comes from the largest rank.
    assert load_adapter(wide, allow_pickle=False).rank == 16
    with pytest.raises(ModelError, match=rf"{Q_A} has rank 8, adapter_config.json's is 16 \(4 "):
        check(tiny, wide)


def test_a_tied_lm_head_is_a_module_of_the_model(tiny: Tiny, tmp_path: Path) -> None:
    """The tiny model ties lm_head to the input embedding, so its file has no lm_head weight."""
    vocab, hidden = load_file(tiny.model / "model.safetensors")["model.embed_tokens.weight"].shape
    head = {
        "base_model.model.lm_head.lora_A.weight": np.zeros((8, hidden), np.float32),
        "base_model.model.lm_head.lora_B.weight": np.zeros((vocab, 8), np.float32),
    }
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = {"target_modules": [*targets, "lm_head"]}
    check(tiny, broken(tiny, tmp_path / "head", lambda t: t | head, **config))
    with pytest.raises(ModelError, match=r"base_model\.model\.lm_head\.lora_A\.weight is missing"):
        check(tiny, broken(tiny, tmp_path / "no-head", None, **config))


def test_with_a_pickled_model_the_adapter_is_checked_on_its_own(tiny: Tiny, tmp_path: Path) -> None:
    """Without safetensors headers the model's modules are unknown; each LoRA module the file
    holds still needs both tensors, of its rank."""
    model = shutil.copytree(tiny.model, tmp_path / "model")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    b = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    spec = broken(tiny, tmp_path / "bad", lambda t: {k: v for k, v in t.items() if k != b})
    load_model(tiny.config(model=model, allow_pickle=True))  # a1 and a2 are complete
    with pytest.raises(ModelError, match=rf"tensor {b} is missing$"):
        load_model(tiny.config(model=model, allow_pickle=True, adapters=[spec]))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"target_modules": None}, "key 'target_modules"),
        ({"target_modules": []}, "key 'target_modules.list[str]': List should have at least 1"),
        ({"r": "8"}, "key 'r': Input should be a valid integer"),
        ({"rank_pattern": {"q_proj": 0}}, "key 'rank_pattern.q_proj': Input should be greater"),
        ({"target_parameters": ["experts.gate_up_proj"]}, "(MoE experts) is not supported"),
    ],
)
def test_config_keys_that_decide_the_tensors_are_checked(
    tiny: Tiny, tmp_path: Path, config: dict[str, object], message: str
) -> None:
    spec = broken(tiny, tmp_path / "bad", None, **config)
    with pytest.raises(ModelError, match=r"adapter 'bad': .*adapter_config\.json key") as error:
        load_adapter(spec, allow_pickle=False)
    assert message in str(error.value)


@pytest.mark.parametrize("engine", ["hf", "vllm"])
@pytest.mark.parametrize("case", ["no q_proj weights", "r 16, rank-8 weights", "truncated"])
def test_a_job_refuses_a_broken_adapter_before_any_output(
    cli: CliRunner,
    write_job: WriteJob,
    movielens: Canonical,
    tiny: Tiny,
    tmp_path: Path,
    engine: str,
    case: str,
) -> None:
    """The check runs in the plan, engine-agnostic: both engine kinds refuse, exit 2, no files."""
    if case == "truncated":
        spec = broken(tiny, tmp_path / "bad")
        truncate(spec.path)
    else:
        _, config, tensors, _ = next(c for c in BROKEN if c[0] == case)
        spec = broken(tiny, tmp_path / "bad", tensors, **config)
    job = write_job(tmp_path, engine={"kind": engine})
    out = tmp_path / "out"
    args = ["score", "--users", movielens.users, "--config", job, "--out", out]
    result = cli.invoke(app, [*map(str, args), "--adapter", f"a1={spec.path}"])
    assert result.exit_code == 2, result.output
    assert "adapter 'a1'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
