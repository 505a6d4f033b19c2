"""A tiny Qwen2 model and LoRA adapters, built from a seed, for tests, benchmarks and the demo.

The model is untrained: its scores show the pipeline working, never recommendation quality. It is
large enough for vLLM's CPU attention (head_dim 64) and small enough to build in seconds. Weights
are drawn wider than a real initialisation so that next-token distributions are peaked: greedy
decoding is then stable across engines and an adapter visibly moves the scores.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from itdr_batch.engines import AdapterSpec, EngineConfig
from itdr_batch.engines.adapters import UNTRAINED_STAMP

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Every folder built here is stamped (reuse when built the same way); in a model folder, the stamp
# also marks the model untrained for the run's manifest.
BUILD_STAMP = UNTRAINED_STAMP


@dataclass(frozen=True)
class Tiny:
    """A built tiny model and its adapters."""

    model: Path
    adapters: tuple[AdapterSpec, ...]

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


def build_tiny(root: Path, tokenizer: Path, adapters: int = 2) -> Tiny:
    """The model (seed 0) and adapters a1, a2, ... (seeds 1, 2, ...) under ``root``."""
    model = build_tiny_model(root / "model", tokenizer, seed=0)
    specs = tuple(
        AdapterSpec(name=f"a{i}", path=build_adapter(root / f"a{i}", model, seed=i))
        for i in range(1, adapters + 1)
    )
    return Tiny(model, specs)


def build_tiny_model(out: Path, tokenizer: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2 model (hidden 128, 2 heads, 1 KV head) with ``tokenizer``'s vocabulary.

    Idempotent: a folder already built with the same seed and tokenizer is reused.
    """
    stamp = {"kind": "model", "seed": seed, "tokenizer": str(tokenizer.resolve())}
    if is_built(out, stamp):
        return out
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos if eos is not None else tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]
    tmp = fresh_folder(out)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / BUILD_STAMP).write_text(json.dumps(stamp))
    return commit_folder(tmp, out)


def build_adapter(out: Path, model: Path, seed: int, rank: int = 8, alpha: int = 16) -> Path:
    """A LoRA adapter on every linear layer of ``model``, with non-zero weights from ``seed``."""
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
        target_modules=TARGET_MODULES,
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
