"""Prompts: ITDR's task texts (``templates``), chat formats (``chat``) and the builder (``build``)
that samples candidates and renders prompts through the Rust core."""

from itdr_batch.prompts.build import PromptConfig, PromptError, build_prompts, popularity_counts

__all__ = ["PromptConfig", "PromptError", "build_prompts", "popularity_counts"]
