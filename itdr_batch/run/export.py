"""A dry run's prompts as OpenAI batch requests (``score --dry-run --format jsonl``), so that
teams on another engine (``vllm run-batch``, any server taking OpenAI batch files) keep this
project's sampling and prompts.

``<task>.jsonl`` is made from the complete run's ``<task>.parquet``, one request per row, so the
run resumes from its Parquet parts like any other, and a complete dry run can be exported again
at any time (rerunning it with ``--format jsonl`` adds the files). Rows without a prompt stay in
``rejects.parquet``.
"""

from pathlib import Path

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.run.config import JobConfig
from itdr_batch.run.folder import RunFolder
from itdr_batch.run.manifest import Manifest
from itdr_batch.tasks import Task, spec

URL = "/v1/chat/completions"
# The requests' model when the job names none: serve the model under this name
# (``vllm run-batch --served-model-name MODEL``), or name it with ``--model`` in the dry run.
PLACEHOLDER_MODEL = "MODEL"


class ExportError(ItdrError):
    """The folder holds no complete dry run, whose prompts the requests are made from."""


def export_requests(out: Path) -> Manifest:
    """Writes ``<task>.jsonl`` for each task of the complete dry run in ``out``; the manifest,
    rewritten last, lists them."""
    folder = RunFolder(out)
    with folder.lock():
        manifest = folder.manifest()
        if manifest is None or not manifest.dry_run:
            raise ExportError(
                f"{folder.out} holds no complete dry run: batch requests are made from the "
                "prompts a --dry-run writes"
            )
        requests = {
            f"{task}.jsonl": requests_frame(folder.out / manifest.files[task], task, manifest)
            for task in manifest.config.prompts.tasks
        }
        return folder.add_json_lines(manifest, requests)


def requests_frame(prompts: Path, task: Task, manifest: Manifest) -> pl.LazyFrame:
    """One ``/v1/chat/completions`` request per row of a dry run's ``prompts`` file: the chat
    format's system text and the user turn as messages (the server applies its own chat
    template), the task's generate budget, greedy; ``custom_id`` is ``<run_id>/<task>/<key>``,
    then ``/<order>`` with several presentation orders."""
    chat = manifest.config.model.chat_format()
    # The dry run wrapped each user turn in the format's text before and after it (``_compile``
    # in itdr_batch/prompts/build.py): removing them leaves what the raw format renders.
    before, after = chat.split()
    messages = [_message("user", pl.col("prompt").str.strip_prefix(before).str.strip_suffix(after))]
    if "{system}" in chat.template:
        messages.insert(0, _message("system", pl.lit(chat.system)))
    custom_id = pl.format("{}/{}/{}", pl.lit(manifest.run_id), pl.lit(str(task)), manifest.key)
    if manifest.config.orders(task) > 1:
        custom_id = pl.format("{}/{}", custom_id, pl.col("order"))
    return pl.scan_parquet(prompts).select(
        custom_id=custom_id,
        method=pl.lit("POST"),
        url=pl.lit(URL),
        body=pl.struct(
            model=pl.lit(model_name(manifest.config)),
            messages=pl.concat_list(messages),
            max_tokens=_max_tokens(task, manifest.config),
            temperature=pl.lit(0.0),
        ),
    )


def model_name(config: JobConfig) -> str:
    """The model folder's name (a dry run never opens it), else ``PLACEHOLDER_MODEL``."""
    return config.model.path.name if config.model.path else PLACEHOLDER_MODEL


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(role=pl.lit(role), content=content)


def _max_tokens(task: Task, config: JobConfig) -> pl.Expr:
    """What generate mode would allow: ``scoring.max_new_tokens``, else the task's budget for the
    row's candidates."""
    if config.scoring.max_new_tokens is not None:
        return pl.lit(config.scoring.max_new_tokens)
    rules = spec(task)
    if not rules.ranking:
        return pl.lit(rules.max_new_tokens(0))
    return pl.col("candidates").list.len().map_elements(rules.max_new_tokens, pl.Int64)
