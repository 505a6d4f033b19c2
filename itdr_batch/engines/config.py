"""Engine settings, validated by pydantic: a wrong key or value names itself and what is allowed."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

EngineKind = Literal["auto", "vllm", "hf"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


class AdapterSpec(BaseModel):
    """A LoRA adapter folder (``adapter_config.json`` + weights) and the job's name for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path


def _unique_names(adapters: tuple[AdapterSpec, ...]) -> tuple[AdapterSpec, ...]:
    names = [a.name for a in adapters]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"adapter names must be unique; repeated: {', '.join(dupes)}")
    return adapters


# Adapters by name: the results and the engines tell them apart by it.
Adapters = Annotated[tuple[AdapterSpec, ...], AfterValidator(_unique_names)]


class EngineOptions(BaseModel):
    """How to run a model, whatever the model: the job configuration's ``[engine]`` table.

    Defaults suit one GPU; on the CPU set a small KV cache (``kv_cache_gib``): vLLM's memory
    fraction there is of all RAM.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True)

    # Spelled `kind` in a job's TOML (`[engine] kind = "vllm"`).
    engine: EngineKind = Field(default="auto", alias="kind")
    max_model_len: int = Field(default=4096, ge=16)
    # vLLM on a GPU: the fraction of GPU memory it may take. On the CPU this fraction is of RAM,
    # so set `kv_cache_gib` there instead.
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    kv_cache_gib: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: StrictBool = False
    # vLLM KV block size (tokens): the prefix cache shares whole blocks, so smaller blocks leave
    # fewer prompt tokens to recompute per candidate. None: vLLM's default (128 on the CPU).
    block_size: int | None = Field(default=None, ge=1)
    # Run vLLM's engine core in this process. None: in-process on the CPU (saves two interpreter
    # start-ups, ~50 s here), a separate process on GPUs (overlaps scheduling with compute).
    inline_engine: StrictBool | None = None
    # Requests handed to the engine per call: bounds memory and keeps prefix-sharing prompts close.
    chunk_size: int = Field(default=512, ge=1)
    # transformers: the most (padded) tokens in one forward pass.
    batch_tokens: int = Field(default=16384, ge=16)


class EngineConfig(EngineOptions):
    """The options plus the model, its adapters and what loading them may do."""

    model: Path
    adapters: Adapters = ()
    dtype: DType = "auto"
    seed: int = 0
    allow_pickle: StrictBool = False
    trust_remote_code: StrictBool = False
