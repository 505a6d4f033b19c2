"""Inference engines behind one interface: vLLM (GPU or CPU build) and transformers + PEFT."""

import logging
from typing import Any

from itdr_batch.engines.adapters import (
    Adapter,
    ModelError,
    check_model,
    check_weights,
    load_adapter,
)
from itdr_batch.engines.base import Engine, Failure, Prompt
from itdr_batch.engines.config import AdapterSpec, EngineConfig

__all__ = [
    "Adapter",
    "AdapterSpec",
    "Engine",
    "EngineConfig",
    "Failure",
    "ModelError",
    "Prompt",
    "load_model",
    "load_tokenizer",
    "open_engine",
]

log = logging.getLogger(__name__)


def load_model(config: EngineConfig) -> list[Adapter]:
    """Checks the model folder and the adapters (safe formats; every LoRA tensor their configs
    promise, readable, of the right rank, dtype and shape); their identities.

    Cheap (only safetensors headers are read), so a job runs it before writing anything, whatever
    the engine.
    """
    check_model(config.model, config.allow_pickle, config.trust_remote_code)
    adapters = [load_adapter(spec, config.allow_pickle) for spec in config.adapters]
    for adapter in adapters:
        check_weights(adapter, config.model)
    return adapters


def open_engine(config: EngineConfig, adapters: list[Adapter] | None = None) -> Engine:
    """The configured engine; ``auto`` tries vLLM and falls back to transformers, saying why.

    ``adapters``: what ``load_model(config)`` returned, when the caller already ran it.
    """
    if adapters is None:
        adapters = load_model(config)
    if config.engine == "hf":
        return _hf(config, adapters)
    if config.engine == "vllm":
        return _vllm(config, adapters)
    try:
        engine = _vllm(config, adapters)
    except Exception as exc:
        log.warning("engine auto: using transformers, vLLM failed to start: %s", exc)
        return _hf(config, adapters)
    log.info("engine auto: using vLLM")
    return engine


def load_tokenizer(config: EngineConfig) -> Any:
    """The model's tokenizer: prompts are tokenized once, here, for every engine."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)


def _vllm(config: EngineConfig, adapters: list[Adapter]) -> Engine:
    from itdr_batch.engines.vllm import VllmEngine

    return VllmEngine(config, adapters)


def _hf(config: EngineConfig, adapters: list[Adapter]) -> Engine:
    from itdr_batch.engines.hf import HfEngine

    return HfEngine(config, adapters)
