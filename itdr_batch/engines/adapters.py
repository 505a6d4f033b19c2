"""Model and adapter folders: safetensors-only loading, LoRA rank, and content identities.

An adapter's identity is a hash of its files' bytes, so a retrained adapter saved under the same
name never reuses a stale prefix cache entry or a stale result.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itdr_batch.engines.config import AdapterSpec
from itdr_batch.errors import ItdrError
from itdr_batch.hashing import files_digest

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# A model folder holding this file was built untrained, from a seed (`itdr_batch.dev.tiny`).
UNTRAINED_STAMP = "itdr-batch-tiny.json"


class ModelError(ItdrError):
    """A model or adapter folder that cannot be used as configured."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int
    content_hash: str
    base_model: str | None

    @property
    def key(self) -> str:
        """The name engines register the adapter under: its name plus a content hash."""
        return f"{self.name}@{self.content_hash[:12]}"


def check_model(path: Path, allow_pickle: bool, trust_remote_code: bool) -> None:
    """A model folder with a config and safetensors weights (pickled weights only if allowed)."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(f"model {path}: no config.json (is this a Hugging Face model folder?)")
    if "auto_map" in json.loads(config_path.read_text()) and not trust_remote_code:
        raise ModelError(
            f"model {path}: config.json's auto_map means the model runs its own Python code "
            "(GLM-4 does); set trust_remote_code = true if you trust it"
        )
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        if allow_pickle:
            return
        raise ModelError(
            f"model {path}: weights are pickled (.bin/.pt), which can run code when loaded; "
            "convert them to safetensors or set allow_pickle = true"
        )
    raise ModelError(f"model {path}: no weights (*.safetensors)")


def load_adapter(spec: AdapterSpec, allow_pickle: bool) -> Adapter:
    config_path = spec.path / "adapter_config.json"
    if not config_path.is_file():
        raise ModelError(f"adapter {spec.name!r} ({spec.path}): no adapter_config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"adapter {spec.name!r}: {config_path} is not JSON: {exc}") from None
    if config.get("peft_type") != "LORA":
        raise ModelError(
            f"adapter {spec.name!r}: {config_path} peft_type is {config.get('peft_type')!r}, "
            "only LORA adapters are supported"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise ModelError(f"adapter {spec.name!r}: {config_path} key 'r' must be a positive int")
    weights = [spec.path / name for name in ADAPTER_WEIGHTS if (spec.path / name).is_file()]
    if not weights:
        raise ModelError(f"adapter {spec.name!r} ({spec.path}): no adapter_model.safetensors")
    if weights[0].suffix == ".bin" and not allow_pickle:
        raise ModelError(
            f"adapter {spec.name!r}: {weights[0]} is pickled, which can run code when loaded; "
            "convert it to safetensors or set allow_pickle = true"
        )
    digest = files_digest([config_path, weights[0]])
    return Adapter(spec.name, spec.path, rank, digest, config.get("base_model_name_or_path"))


@dataclass(frozen=True)
class ModelIdentity:
    """A model folder's name, path, and a hash of its config and weights (content, not names).

    ``untrained``: built by ``itdr_batch.dev.tiny``, so that evaluations of it say that their
    figures show the pipeline working, not a model's quality.
    """

    name: str
    path: str
    sha256: str
    untrained: bool


def model_identity(model: Path) -> ModelIdentity:
    files = [model / "config.json", *sorted(model.glob("*.safetensors"))]
    return ModelIdentity(
        name=model.name,
        path=str(model.resolve()),
        sha256=files_digest(files),
        untrained=(model / UNTRAINED_STAMP).is_file(),
    )


# A LoRA weight of a decoder layer's linear module, as PEFT names it.
LORA_WEIGHT = re.compile(r"layers\.(\d+)\..*?\b(\w+_proj)\.lora_([AB])\.weight$")


def check_fits(adapter: Adapter, model: Path) -> None:
    """Fails when the adapter's LoRA shapes do not match the model's layers.

    An adapter trained for another base model either crashes the engine mid-run or, worse, loads
    into a model of the same shape family and scores nonsense; its shapes tell before any output.
    Modules this check does not know (other architectures' names) are left to the engine.
    """
    weights = adapter.path / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return  # a pickled adapter (allow_pickle): not opened before the engine loads it
    from safetensors import safe_open

    config = json.loads((model / "config.json").read_text())
    dims = _linear_dims(config)
    layers = config.get("num_hidden_layers")
    with safe_open(str(weights), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            match = LORA_WEIGHT.search(name)
            if not match or match[2] not in dims:
                continue
            layer, module, side = int(match[1]), match[2], match[3]
            rows, cols = f.get_slice(name).get_shape()
            want_in, want_out = dims[module]
            got = cols if side == "A" else rows
            want = want_in if side == "A" else want_out
            problem = None
            if layers is not None and layer >= layers:
                problem = f"has layer {layer} but the model has {layers} layers"
            elif got != want:
                io = "input" if side == "A" else "output"
                problem = f"expects {module} {io} size {got}, the model's is {want}"
            if problem:
                raise ModelError(
                    f"adapter {adapter.name!r} ({adapter.path}) does not fit model {model}: it "
                    f"{problem} (trained for {adapter.base_model or 'another base model'!r})"
                )


def _linear_dims(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(input, output) sizes of a LLaMA/Qwen-style decoder layer's linear modules."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        inter = int(config["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return {}
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
