"""Chat formats the ITDR adapters were trained with (LLaMA-Factory templates), and overrides.

A format wraps the user turn (``<Task Description>\\n<Input>``) in the model's chat markup, up to
the point where the assistant's answer starts, so the model continues with the answer.
"""

import re
from dataclasses import dataclass
from typing import Any

from itdr_batch.errors import ItdrError

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class ChatFormatError(ItdrError):
    """A chat format that is malformed, unknown, or does not fit the model's tokenizer."""


@dataclass(frozen=True)
class ChatFormat:
    """``template`` holds ``{content}`` (the user turn) and optionally ``{system}``."""

    template: str
    system: str = ""

    def __post_init__(self) -> None:
        if self.template.count("{content}") != 1:
            raise ChatFormatError(
                f"chat template must hold {{content}} exactly once: {self.template!r}"
            )

    def split(self) -> tuple[str, str]:
        """The text before and after the user turn."""
        before, after = self.template.replace("{system}", self.system).split("{content}")
        return before, after


CHAT_FORMATS = {
    "qwen": ChatFormat(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
        "<|im_start|>assistant\n",
        system=QWEN_SYSTEM,
    ),
    "glm4": ChatFormat("[gMASK]<sop><|user|>\n{content}<|assistant|>"),
    "llama3": ChatFormat(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "raw": ChatFormat("{content}"),
}


def chat_format(name_or_format: str | ChatFormat) -> ChatFormat:
    """A named format (qwen, glm4, llama3, raw) or a custom one."""
    if isinstance(name_or_format, ChatFormat):
        return name_or_format
    try:
        return CHAT_FORMATS[name_or_format]
    except KeyError:
        known = ", ".join(CHAT_FORMATS)
        raise ChatFormatError(f"unknown chat format {name_or_format!r}; known: {known}") from None


# Chat markup the formats use; each must be one special token of the model's tokenizer.
MARKERS = re.compile(r"<\|[^|<>\s]+\|>|\[gMASK\]|<sop>")


def check_tokenizer(fmt: ChatFormat, tokenizer: Any, model: str) -> None:
    """Fails unless every marker of ``fmt`` is a single token for ``tokenizer``.

    A model never trained with a format splits its markers into ordinary pieces and scores
    garbage without any error, so this is checked before anything runs.
    """
    for marker in _foreign_markers(fmt, tokenizer):
        fits = [
            name for name, known in CHAT_FORMATS.items() if not _foreign_markers(known, tokenizer)
        ]
        raise ChatFormatError(
            f"model.chat: {marker!r} is not a token of {model}'s tokenizer, so the model was "
            f"not trained with this chat format; formats that fit it: {', '.join(fits)}"
        )


def _foreign_markers(fmt: ChatFormat, tokenizer: Any) -> list[str]:
    before, after = fmt.split()
    markers = dict.fromkeys(MARKERS.findall(before + after))
    return [m for m in markers if len(tokenizer(m, add_special_tokens=False)["input_ids"]) != 1]
