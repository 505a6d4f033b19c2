"""Model and adapter folders: safetensors-only loading, LoRA rank, and content identities.

An adapter's identity is a hash of its files' bytes, so a retrained adapter saved under the same
name never reuses a stale prefix cache entry or a stale result.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from itdr_batch.engines.config import AdapterSpec

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class ModelError(ValueError):
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
    digest = hashlib.sha256()
    for path in (config_path, weights[0]):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return Adapter(
        spec.name, spec.path, rank, digest.hexdigest(), config.get("base_model_name_or_path")
    )
