"""Model and adapter folders: safetensors-only loading, complete LoRA weights, content identities.

An adapter's identity is a hash of its files' bytes, so a retrained adapter saved under the same
name never reuses a stale prefix cache entry or a stale result.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from itdr_batch.engines.config import AdapterSpec
from itdr_batch.errors import ItdrError
from itdr_batch.hashing import files_digest

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# A model folder holding this file was built untrained, from a seed (`itdr_batch.dev.tiny`).
UNTRAINED_STAMP = "itdr-batch-tiny.json"


class ModelError(ItdrError):
    """A model or adapter folder that cannot be used as configured."""


class LoraSettings(BaseModel):
    """The adapter_config.json keys that decide which LoRA tensors its weights file must hold.

    Module selection follows PEFT's rules: a ``target_modules`` string is a regex matched against
    whole module names, a list entry matches a name or its last dotted parts; ``exclude_modules``
    likewise; ``layers_to_transform`` (with ``layers_pattern``) narrows list entries to those
    layers; ``rank_pattern`` gives modules whose name ends in a key another rank.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    r: PositiveInt
    target_modules: Annotated[list[str], Field(min_length=1)] | str
    exclude_modules: list[str] | str | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict)
    fan_in_fan_out: bool = False
    target_parameters: list[str] | None = None
    base_model_name_or_path: str | None = None

    @property
    def max_rank(self) -> int:
        return max([self.r, *self.rank_pattern.values()])

    def targets(self, module: str) -> bool:
        """Whether PEFT puts LoRA on ``module`` (``check_target_module_exists``)."""
        if self.exclude_modules and _selects(self.exclude_modules, module):
            return False
        if isinstance(self.target_modules, str) or module in self.target_modules:
            return _selects(self.target_modules, module)
        return _selects(self.target_modules, module) and self._in_layers(module)

    def rank_of(self, module: str) -> int:
        """The first ``rank_pattern`` key ending ``module`` at a dot gives its rank, else ``r``."""
        ranks = (r for key, r in self.rank_pattern.items() if re.match(rf"(.*\.)?({key})$", module))
        return next(ranks, self.r)

    def _in_layers(self, module: str) -> bool:
        layers = self.layers_to_transform
        if layers is None or layers == []:
            return True
        if not self.layers_pattern:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        else:
            patterns = (
                [self.layers_pattern]
                if isinstance(self.layers_pattern, str)
                else self.layers_pattern
            )
            matches = (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module) for p in patterns)
            match = next((m for m in matches if m), None)
        return match is not None and int(match["idx"]) in (
            [layers] if isinstance(layers, int) else layers
        )


def _selects(targets: list[str] | str, module: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return module in targets or any(module.endswith(f".{target}") for target in targets)


@dataclass(frozen=True)
class Adapter:
    """A checked adapter folder; ``rank`` is its largest (``r`` or a ``rank_pattern`` rank)."""

    name: str
    path: Path
    rank: int
    content_hash: str
    base_model: str | None
    lora: LoraSettings

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
            "(GLM-4 does, but its -hf checkpoints, e.g. THUDM/glm-4-9b-chat-hf, need none: "
            "transformers and vLLM support them without it); set trust_remote_code = true if "
            "you trust it"
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
    lora = _lora_settings(spec.name, config_path, config)
    weights = [spec.path / name for name in ADAPTER_WEIGHTS if (spec.path / name).is_file()]
    if not weights:
        raise ModelError(f"adapter {spec.name!r} ({spec.path}): no adapter_model.safetensors")
    if weights[0].suffix == ".bin" and not allow_pickle:
        raise ModelError(
            f"adapter {spec.name!r}: {weights[0]} is pickled, which can run code when loaded; "
            "convert it to safetensors or set allow_pickle = true"
        )
    digest = files_digest([config_path, weights[0]])
    return Adapter(spec.name, spec.path, lora.max_rank, digest, lora.base_model_name_or_path, lora)


def _lora_settings(name: str, path: Path, config: dict[str, Any]) -> LoraSettings:
    try:
        lora = LoraSettings.model_validate(config)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(map(str, error["loc"]))
        raise ModelError(f"adapter {name!r}: {path} key {key!r}: {error['msg']}") from None
    if lora.target_parameters:
        raise ModelError(
            f"adapter {name!r}: {path} key 'target_parameters': LoRA on parameters (MoE experts) "
            "is not supported"
        )
    return lora


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


# A LoRA tensor as PEFT saves it: linear modules' lora_A/B.weight, embeddings' lora_embedding_A/B.
LORA_TENSOR = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])"
    r"(?:\.weight)?$"
)
# Dtypes both engines load LoRA weights from.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class _Lora:
    """One LoRA tensor of the adapter's file: its name, shape and safetensors dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    embedding: bool


def check_weights(adapter: Adapter, model: Path) -> None:
    """Fails unless the adapter's weights are exactly what its config promises for this model.

    PEFT only warns about a missing LoRA tensor and initialises it at random (two runs with one
    run id then score differently); a wrong rank or shape, or an unreadable file, crashes the
    engine mid-run; an adapter for another base model may load and score nonsense. Each module
    of the model that ``target_modules`` selects (PEFT's rules, against the module names in the
    model's safetensors headers) needs lora_A and lora_B of its rank, floating point, with the
    model's sizes; tensors for other modules are refused too, since vLLM loads them and PEFT
    does not. Nothing is loaded: only headers are read.
    """
    weights = adapter.path / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return  # a pickled adapter (allow_pickle): not opened before the engine loads it
    tensors = _lora_tensors(weights, f"adapter {adapter.name!r}")
    modules = _model_modules(model)
    # A pickled model's module names are unknown: the adapter's own modules stand in for them.
    known = modules or dict.fromkeys(module for module, _ in tensors)
    expected = {name for name in known if adapter.lora.targets(name)}
    fit = (
        f"the adapter does not fit model {model} "
        f"(trained for {adapter.base_model or 'another base model'!r})"
    )
    if modules and not expected:
        raise ModelError(
            f"adapter {adapter.name!r} ({adapter.path}): target_modules "
            f"{adapter.lora.target_modules!r} match no module of the model: {fit}"
        )
    problems = [
        problem
        for module in sorted(expected | {m for m, _ in tensors}, key=_natural)
        for problem in _module_problems(module, tensors, known, expected, adapter.lora, fit)
    ]
    if problems:
        more = f" ({len(problems)} tensors missing or wrong in all)" if len(problems) > 1 else ""
        raise ModelError(f"adapter {adapter.name!r}: {weights}: {problems[0]}{more}")


def _module_problems(
    module: str,
    tensors: dict[tuple[str, str], _Lora],
    modules: dict[str, tuple[int, int] | None],
    expected: set[str],
    lora: LoraSettings,
    fit: str,
) -> list[str]:
    """What is wrong with one module's lora_A and lora_B, first problem first."""
    pair = [tensors.get((module, side)) for side in "AB"]
    present = [tensor.name for tensor in pair if tensor]
    if module not in modules:
        return [
            f"tensor {name} is for module {module}, which the model lacks: {fit}"
            for name in present
        ]
    if module not in expected:
        return [
            f"tensor {name} is for module {module}, which target_modules does not select"
            for name in present
        ]
    rank = lora.rank_of(module)
    size = modules.get(module)
    problems = []
    for side, tensor in zip("AB", pair, strict=True):
        if tensor is None:
            problems.append(f"tensor base_model.model.{module}.lora_{side}.weight is missing")
        elif tensor.dtype not in FLOAT_DTYPES:
            problems.append(f"tensor {tensor.name} has dtype {tensor.dtype}, not floating point")
        elif len(tensor.shape) != 2:
            problems.append(f"tensor {tensor.name} has shape {list(tensor.shape)}, not 2-D")
        elif (got := tensor.shape[0 if side == "A" else 1]) != rank:
            problems.append(f"tensor {tensor.name} has rank {got}, adapter_config.json's is {rank}")
        elif size and (want := _model_size(side, tensor, size, lora)) != (
            got := tensor.shape[1 if side == "A" else 0]
        ):
            problems.append(
                f"tensor {tensor.name} has size {got} where the model's is {want}: {fit}"
            )
    return problems


def _model_size(side: str, tensor: _Lora, size: tuple[int, int], lora: LoraSettings) -> int:
    """The model size a LoRA tensor's non-rank axis must have.

    A linear weight is (out, in): lora_A is (r, in), lora_B (out, r). An embedding weight is
    (vocab, hidden): lora_embedding_A is (r, vocab), lora_embedding_B (hidden, r). GPT-2's Conv1D
    (``fan_in_fan_out``) stores (in, out).
    """
    rows, cols = size
    if tensor.embedding != lora.fan_in_fan_out:
        rows, cols = cols, rows
    return cols if side == "A" else rows


def _lora_tensors(weights: Path, owner: str) -> dict[tuple[str, str], _Lora]:
    """(module, side) → the file's LoRA tensor; other tensors (biases, DoRA) are not looked at."""
    tensors = {}
    with _open(weights, owner) as f:
        for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            if match := LORA_TENSOR.match(name):
                view = f.get_slice(name)
                tensors[match["module"], match["side"]] = _Lora(
                    name, tuple(view.get_shape()), view.get_dtype(), bool(match["embedding"])
                )
    return tensors


def _model_modules(model: Path) -> dict[str, tuple[int, int] | None]:
    """The model's weight-holding modules and their (rows, cols), from safetensors headers.

    Quantized weights give names but no usable sizes (None). Empty for a pickled model
    (allow_pickle), whose adapters are then checked on their own. A tied ``lm_head`` has no
    weight of its own: it takes the input embedding's.
    """
    quantized = "quantization_config" in json.loads((model / "config.json").read_text())
    modules: dict[str, tuple[int, int] | None] = {}
    for file in sorted(model.glob("*.safetensors")):
        with _open(file, f"model {model}") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                module, _, kind = key.rpartition(".")
                shape = f.get_slice(key).get_shape()
                if kind in ("weight", "qweight") and len(shape) == 2:
                    exact = kind == "weight" and not quantized
                    modules[module] = (shape[0], shape[1]) if exact else None
    embedding = next((m for m in modules if m.endswith("embed_tokens")), None)
    if embedding and "lm_head" not in modules:
        modules["lm_head"] = modules[embedding]
    return modules


def _open(path: Path, owner: str) -> Any:
    """A safetensors file's header; a truncated or corrupt file is bad input, not a crash."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{owner}: {path} is not a readable safetensors file: {exc}") from None


def _natural(name: str) -> list[tuple[bool, int, str]]:
    """Sort key: model.layers.2 before model.layers.10."""
    return [(part.isdigit(), int(part) if part.isdigit() else 0, part) for part in name.split(".")]
