"""Tiny Qwen2, LLaMA and GLM-4 models and LoRA adapters, built from a seed, for tests, benchmarks
and the demo; and a larger randomly initialised Qwen2 "body" model for engine benchmarks.

The tiny models are untrained: their scores show the pipeline working, never recommendation
quality. They are large enough for vLLM's CPU attention (head_dim 64) and small enough to build in
seconds. Weights are drawn wider than a real initialisation so that next-token distributions are
peaked: greedy decoding is then stable across engines and an adapter visibly moves the scores.

The ITDR adapters were trained on Qwen2.5, GLM-4 and LLaMA-3.2; each family is built with its
native transformers class (no remote code) and its chat format's markers as special tokens. GLM-4
is ``GlmForCausalLM`` (model_type ``glm``), the class of THUDM/glm-4-9b-chat-hf, the -hf form of
the GLM-4 ITDR tuned. vLLM 0.32 runs it through its transformers backend, LoRA included. Its own
``Glm4ForCausalLM`` (GLM-4-0414) splits the fused ``gate_up_proj`` into gate and up projections and
so refuses a LoRA adapter on every linear layer, which is how such adapters are trained.
"""

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from itdr_batch.engines import AdapterSpec, EngineConfig
from itdr_batch.engines.adapters import UNTRAINED_STAMP
from itdr_batch.prompts.chat import CHAT_FORMATS, MARKERS

Family = Literal["qwen2", "llama", "glm4"]
# Every folder built here is stamped (reuse when built the same way); in a model folder, the stamp
# also marks the model untrained for the run's manifest.
BUILD_STAMP = UNTRAINED_STAMP


@dataclass(frozen=True)
class FamilySpec:
    """What sets a family's tiny model apart: its transformers model type, chat format (whose
    markers become special tokens), end-of-turn token (eos) and linear layers (LoRA targets)."""

    model_type: str
    chat: str
    end_of_turn: str
    target_modules: tuple[str, ...]
    config: Mapping[str, object] = field(default_factory=dict)


_SPLIT_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAMILIES: dict[Family, FamilySpec] = {
    "qwen2": FamilySpec("qwen2", "qwen", "<|im_end|>", _SPLIT_MLP),
    "llama": FamilySpec("llama", "llama3", "<|eot_id|>", _SPLIT_MLP, {"head_dim": 64}),
    # GLM-4 ends a turn by starting the next one; its MLP's gate and up projections are one layer.
    "glm4": FamilySpec(
        "glm",
        "glm4",
        "<|user|>",
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
        {"head_dim": 64, "attention_bias": True},
    ),
}


@dataclass(frozen=True)
class Tiny:
    """A built tiny model and its adapters."""

    model: Path
    adapters: tuple[AdapterSpec, ...]
    family: Family = "qwen2"

    @property
    def chat(self) -> str:
        """The chat format the model's tokenizer was given markers for."""
        return FAMILIES[self.family].chat

    def config(self, **overrides: object) -> EngineConfig:
        """Engine settings for this machine: float32, a 1 GiB KV cache, no compilation."""
        settings: dict[str, object] = {
            "model": self.model,
            "adapters": self.adapters,
            "dtype": "float32",
            "max_model_len": 1024,
            "kv_cache_gib": 1,
            "enforce_eager": True,
        }
        return EngineConfig.model_validate(settings | overrides)


def build_tiny(root: Path, tokenizer: Path, adapters: int = 2, family: Family = "qwen2") -> Tiny:
    """The model (seed 0) and adapters a1, a2, ... (seeds 1, 2, ...) under ``root``."""
    model = build_tiny_model(root / "model", tokenizer, seed=0, family=family)
    specs = tuple(
        AdapterSpec(name=f"a{i}", path=build_adapter(root / f"a{i}", model, seed=i))
        for i in range(1, adapters + 1)
    )
    return Tiny(model, specs, family)


def build_tiny_model(out: Path, tokenizer: Path, seed: int = 0, family: Family = "qwen2") -> Path:
    """A 2-layer model of ``family`` (hidden 128, 2 heads, 1 KV head) with ``tokenizer``'s
    vocabulary plus the family's chat markers.

    Idempotent: a folder already built with the same seed, tokenizer and family is reused.
    """
    stamp = {"kind": "model", "seed": seed, "tokenizer": str(tokenizer.resolve())}
    if family != "qwen2":
        stamp["family"] = family
    if is_built(out, stamp):
        return out
    spec = FAMILIES[family]
    tok = _family_tokenizer(tokenizer, spec)
    config = _config(
        spec.model_type,
        tok,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        initializer_range=0.2,
        tie_word_embeddings=True,
        **spec.config,
    )
    return _save_model(out, stamp, config, tok, seed)


def build_body_model(out: Path, tokenizer: Path, seed: int = 0) -> Path:
    """A randomly initialised Qwen2 whose body, as in Qwen2.5-7B, does nearly all of a token's
    work, so engine benchmarks on it measure what a real model's throughput depends on (the tiny
    model's output layer outweighs its body).

    ``tokenizer`` is the demo's (``itdr_batch.dev.tokenizer``, 4,096 tokens): with hidden 512 and
    8 layers (8 heads of 64, 2 KV heads, MLP 3,072), the output layer is under 5% of a token's
    matmul FLOPs (Qwen2.5-7B's: 8%). Idempotent like ``build_tiny_model``.
    """
    stamp = {"kind": "body", "seed": seed, "tokenizer": str(tokenizer.resolve())}
    if is_built(out, stamp):
        return out
    tok = _family_tokenizer(tokenizer, FAMILIES["qwen2"])
    config = _config(
        "qwen2",
        tok,
        hidden_size=512,
        intermediate_size=3072,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return _save_model(out, stamp, config, tok, seed)


def _family_tokenizer(tokenizer: Path, spec: FamilySpec) -> Any:
    """``tokenizer`` with the family's chat markers as special tokens and its end of turn as eos.

    Another family's chat template would render the wrong markup, so only Qwen's is kept.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    before, after = CHAT_FORMATS[spec.chat].split()
    missing = [
        m for m in dict.fromkeys(MARKERS.findall(before + after)) if m not in tok.get_vocab()
    ]
    tok.add_tokens(missing, special_tokens=True)
    tok.eos_token = spec.end_of_turn
    if spec.chat != "qwen":
        tok.chat_template = None
    return tok


def _config(model_type: str, tok: Any, **sizes: object) -> Any:
    """A float32 config of ``model_type`` over ``tok``'s vocabulary, eos and padding."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
        **sizes,
    )


def _save_model(out: Path, stamp: dict[str, object], config: Any, tok: Any, seed: int) -> Path:
    """The model of ``config``, initialised from ``seed``, saved with ``tok`` and the stamp."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    tmp = fresh_folder(out)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / BUILD_STAMP).write_text(json.dumps(stamp))
    return commit_folder(tmp, out)


def build_adapter(out: Path, model: Path, seed: int, rank: int = 8, alpha: int = 16) -> Path:
    """A LoRA adapter on every linear layer of ``model``'s decoder, with non-zero weights from
    ``seed``; which layers those are follows the model's family (its config's model type)."""
    stamp = {"kind": "adapter", "seed": seed, "rank": rank, "alpha": alpha, "model": str(model)}
    if is_built(out, stamp):
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model)
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(_family_of(base.config.model_type).target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    tmp = fresh_folder(out)
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    # PEFT writes target_modules from a set, in an order that changes with Python's hash seed;
    # sorted, the same seed gives the same bytes, so the same adapter hash and run id.
    config_path = tmp / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / BUILD_STAMP).write_text(json.dumps(stamp))
    return commit_folder(tmp, out)


def _family_of(model_type: str) -> FamilySpec:
    return next(spec for spec in FAMILIES.values() if spec.model_type == model_type)


def is_built(out: Path, stamp: dict[str, object]) -> bool:
    path = out / BUILD_STAMP
    return path.is_file() and json.loads(path.read_text()) == stamp


def fresh_folder(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_folder(tmp: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
