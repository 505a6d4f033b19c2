"""transformers + PEFT: the reference engine, and the fallback where vLLM cannot run.

Requests are grouped by adapter and bucketed by length (batches under a padded-token budget).
Prompts are left-padded with explicit position ids, so padding never changes a score. Likelihood
scoring prefills each prompt once and scores its candidates' answers on copies of that prompt's
``past_key_values``; ``logits_to_keep`` avoids full-vocabulary logits over the prompt.
"""

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from itdr_batch.engines.adapters import Adapter
from itdr_batch.engines.base import Failure, Prompt, isolate, too_long
from itdr_batch.engines.config import EngineConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Continuation rows scored per forward pass are capped so their logits stay under this many floats.
LOGITS_BUDGET = 64 * 1024 * 1024


class HfEngine:
    name = "hf"

    def __init__(
        self, config: EngineConfig, adapters: Sequence[Adapter], model: Any | None = None
    ) -> None:
        """Loads ``config.model`` and the adapters, unless ``model`` (with them) is given."""
        from transformers import GenerationConfig

        if model is None:
            model = _load(config, adapters)
        self._model = model.eval()
        self._device = next(model.parameters()).device
        self._generation = GenerationConfig.from_model_config(model.config)
        self._pad = 0
        self.max_model_len = config.max_model_len
        self.adapters = {a.name: a for a in adapters}
        self._batch_tokens = config.batch_tokens

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[list[int] | Failure]:
        eos = self._generation.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

        def run(batch: list[int]) -> list[list[int]]:
            ids, mask, _ = self._left_padded([prompts[i] for i in batch])
            out = self._model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self._pad,
                eos_token_id=sorted(stops) or None,
            )
            results = []
            for row in out[:, ids.shape[1] :].tolist():
                end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                results.append(row[:end])
            return results

        return self._batched(prompts, max_tokens, run)

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], token_ids: Sequence[int]
    ) -> list[list[float] | Failure]:
        wanted = torch.tensor(list(token_ids), device=self._device)

        def run(batch: list[int]) -> list[list[float]]:
            ids, mask, positions = self._left_padded([prompts[i] for i in batch])
            logits = self._model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
            ).logits[:, -1]
            scores: list[list[float]] = torch.log_softmax(logits.float(), -1)[:, wanted].tolist()
            return scores

        return self._batched(prompts, 1, run)

    def continuation_logprobs(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[list[float]] | Failure]:
        longest = max((len(c) for cs in continuations for c in cs), default=0)

        def run(batch: list[int]) -> list[list[list[float]]]:
            return self._score_answers(
                [prompts[i] for i in batch], [continuations[i] for i in batch]
            )

        return self._batched(prompts, longest + 1, run)

    def forget(self) -> None:
        """Nothing outlives a call here."""

    def close(self) -> None:
        del self._model

    def _score_answers(
        self, batch: list[Prompt], answers: list[Sequence[Sequence[int]]]
    ) -> list[list[list[float]]]:
        ids, mask, positions = self._left_padded(batch)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        first = torch.log_softmax(out.logits[:, -1].float(), -1)
        cache = out.past_key_values
        rows = [(u, list(a)) for u, user_answers in enumerate(answers) for a in user_answers]
        scores: list[list[float]] = []
        width = max((len(a) for _, a in rows), default=0)
        per_pass = max(1, LOGITS_BUDGET // (max(width, 1) * first.shape[-1]))
        for start in range(0, len(rows), per_pass):
            part = rows[start : start + per_pass]
            users = torch.tensor([u for u, _ in part], device=self._device)
            tokens = torch.full((len(part), width), self._pad)
            cont_mask = torch.zeros((len(part), width), dtype=mask.dtype)
            for r, (_, answer) in enumerate(part):
                tokens[r, : len(answer)] = torch.tensor(answer)
                cont_mask[r, : len(answer)] = 1
            tokens, cont_mask = self._on_device(tokens, cont_mask)
            shared = copy.deepcopy(cache)
            shared.batch_select_indices(users)
            lengths = mask[users].sum(-1, keepdim=True)
            logits = self._model(
                input_ids=tokens,
                attention_mask=torch.cat([mask[users], cont_mask], -1),
                position_ids=lengths + torch.arange(width, device=self._device),
                past_key_values=shared,
            ).logits
            logprobs = torch.log_softmax(logits.float(), -1)
            # Token j of an answer is predicted at position j - 1; token 0 by the prompt's end.
            heads = first[users, tokens[:, 0]].tolist()
            rest = logprobs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1).tolist()
            for r, (_, answer) in enumerate(part):
                scores.append([heads[r], *rest[r][: len(answer) - 1]] if answer else [])
        grouped: list[list[list[float]]] = []
        pos = 0
        for user_answers in answers:
            grouped.append(scores[pos : pos + len(user_answers)])
            pos += len(user_answers)
        return grouped

    def _left_padded(self, batch: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), width), self._pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, p in enumerate(batch):
            ids[r, width - len(p.ids) :] = torch.tensor(p.ids)
            mask[r, width - len(p.ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = self._on_device(ids, mask, positions)
        return ids, mask, positions

    def _batched(
        self, prompts: Sequence[Prompt], extra: int, run: Callable[[list[int]], list[Any]]
    ) -> list[Any]:
        """Run per adapter over length-sorted batches; too-long and failing requests fail alone."""
        results: list[Any] = [too_long(p, extra, self.max_model_len) for p in prompts]
        runnable = [i for i, r in enumerate(results) if r is None]
        for indices in self._batches(prompts, runnable):
            with torch.inference_mode(), self._adapter(prompts[indices[0]].adapter):
                for i, value in zip(indices, isolate(run, indices), strict=True):
                    results[i] = value
        return results

    def _batches(self, prompts: Sequence[Prompt], indices: list[int]) -> Iterator[list[int]]:
        order = sorted(indices, key=lambda i: (prompts[i].adapter or "", len(prompts[i].ids)))
        batch: list[int] = []
        for i in order:
            candidate = [*batch, i]
            same_adapter = not batch or prompts[batch[0]].adapter == prompts[i].adapter
            if batch and (
                not same_adapter or len(prompts[i].ids) * len(candidate) > self._batch_tokens
            ):
                yield batch
                candidate = [i]
            batch = candidate
        if batch:
            yield batch

    def _on_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(self._device) for t in tensors]

    def _adapter(self, name: str | None) -> AbstractContextManager[Any]:
        if not self.adapters:
            return nullcontext()
        if name is None:
            return self._model.disable_adapter()  # type: ignore[no-any-return]
        self._model.set_adapter(self.adapters[name].key)
        return nullcontext()


def _load(config: EngineConfig, adapters: Sequence[Adapter]) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        config.model,
        dtype=DTYPES.get(config.dtype, "auto"),
        use_safetensors=None if config.allow_pickle else True,
        trust_remote_code=config.trust_remote_code,
        device_map="cuda" if torch.cuda.is_available() else None,
    )
    if adapters:
        from peft import PeftModel

        first, *rest = adapters
        model = PeftModel.from_pretrained(model, first.path, adapter_name=first.key)
        for adapter in rest:
            model.load_adapter(str(adapter.path), adapter_name=adapter.key)
    return model
