"""The ``itdr-batch`` command line (Typer): every command calls the same job code as the flows.

Errors are handled in one place (``_Commands``): bad input or configuration (an ``ItdrError``)
prints its message and exits with status 2, a crashed engine exits with status 1, and anything
else is a bug and keeps its traceback.
"""

import logging
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table as RichTable
from typer.core import TyperGroup, TyperOption

from itdr_batch.bench.cli import app as bench_app
from itdr_batch.datasets import (
    SAMPLE,
    Ingested,
    Summary,
    read_amazon2018,
    read_movielens,
    read_recbole,
    write_canonical,
)
from itdr_batch.errors import ItdrError
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.prompts.templates import DOMAINS
from itdr_batch.run import EngineCrashed, JobResult, load_config, parse_override, run_job
from itdr_batch.run.export import export_requests
from itdr_batch.run.logs import LOG_FILE, library_logs_to
from itdr_batch.run.plan import resolve_domain
from itdr_batch.run.progress import LogReporter, Reporter, RichReporter
from itdr_batch.tables.load import load_interactions, load_items, load_users
from itdr_batch.tasks import Mode, Task, spec


class Engine(StrEnum):
    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class Strategy(StrEnum):
    uniform = "uniform"
    popularity = "popularity"


class PromptFormat(StrEnum):
    parquet = "parquet"
    jsonl = "jsonl"


console = Console()
errors = Console(stderr=True)


class _Commands(TyperGroup):
    """The root command group: the one place where errors become exit statuses."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except EngineCrashed as exc:
            errors.print(f"[bold red]engine failure:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from exc
        except ItdrError as exc:
            errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """Every command reached from here (subgroups' too) shows its flags without a type."""
        command = super().get_command(ctx, cmd_name)
        pending = [] if command is None else [command]
        while pending:
            current = pending.pop()
            _untyped_flags(current.get_params(ctx))
            pending += getattr(current, "commands", {}).values()
        return command


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Typer's rich help gives flags a type column (``--verbose <bool>``), as if they took a
    value; an empty metavar leaves it blank (a flag's metavar is shown nowhere else)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
    return params


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    help="Offline batch scoring of LLM recommenders (ITDR).",
)
ingest = typer.Typer(no_args_is_help=True, help="Turn a public dataset into canonical Parquet.")
app.add_typer(ingest, name="ingest")
app.add_typer(bench_app, name="bench")


@app.callback()
def setup(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Libraries' logs on the terminal too.")
    ] = False,
) -> None:
    """Logs go to stderr, so that stdout carries only what a command prints; a command with a
    run folder sends the libraries' logs to a file there (``-v``: to the terminal as well)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False, markup=False)],
        force=True,
    )


Out = Annotated[Path, typer.Option("--out", help="Folder for the canonical Parquet files.")]
IngestDomain = Annotated[
    str | None,
    typer.Option(help=f"Every item's domain: prompts' words ({', '.join(DOMAINS)}), or CDR's."),
]


@ingest.command("movielens")
def ingest_movielens(
    out: Out,
    src: Annotated[
        Path | None,
        typer.Argument(help="ml-latest-small, ml-100k or ml-1m folder (default: bundled sample)."),
    ] = None,
    domain: IngestDomain = None,
) -> None:
    """MovieLens latest-small (CSV), 100k or 1m, detected from the folder's files."""
    _ingest(lambda: read_movielens(src or SAMPLE, domain), out)


@ingest.command("amazon2018")
def ingest_amazon2018(
    reviews: Annotated[Path, typer.Option(help="Reviews JSON lines (.json or .json.gz).")],
    meta: Annotated[Path, typer.Option(help="Metadata JSON lines (.json or .json.gz).")],
    out: Out,
    domain: IngestDomain = None,
) -> None:
    """Amazon Review Data (2018): one category's reviews and metadata files."""
    _ingest(lambda: read_amazon2018(reviews, meta, domain), out)


@ingest.command("recbole")
def ingest_recbole(
    inter: Annotated[Path, typer.Option(help="Atomic .inter file (interactions or sequences).")],
    item: Annotated[Path, typer.Option(help="Atomic .item file.")],
    out: Out,
    domain: IngestDomain = None,
) -> None:
    """RecBole atomic files."""
    _ingest(lambda: read_recbole(inter, item, domain), out)


@app.command()
def prompts(
    task: Annotated[Task, typer.Option(help="ITDR subtask.")],
    interactions: Annotated[Path, typer.Option(help="Canonical interactions Parquet.")],
    items: Annotated[Path, typer.Option(help="Canonical items Parquet.")],
    users: Annotated[
        Path | None, typer.Option(help="Users shard (TUI: item ids); default: the first users.")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="How many prompts to print.")] = 3,
    domain: Annotated[
        str | None,
        typer.Option(help=f"Domain words: {', '.join(DOMAINS)} (default: the items' domain)."),
    ] = None,
    chat: Annotated[str, typer.Option(help="Chat format: qwen, glm4, llama3 or raw.")] = "raw",
    history_len: Annotated[int, typer.Option(help="History entries shown.")] = 10,
    candidates: Annotated[int, typer.Option(help="Candidates per user (ranking tasks).")] = 10,
    strategy: Annotated[Strategy, typer.Option(help="Negative sampling.")] = Strategy.uniform,
    evaluation: Annotated[bool, typer.Option(help="Leave-last-out evaluation.")] = False,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    field: Annotated[
        list[str] | None,
        typer.Option(help="Template field from another items column, e.g. category=genres."),
    ] = None,
) -> None:
    """Print the first prompts of a shard, to see what the model will see."""
    item_table = load_items(items)
    interaction_table = load_interactions(interactions, item_table)
    key = spec(task).key
    if users is None:
        source = interaction_table if key == "user_id" else item_table
        rows = source.frame.select(key).unique(maintain_order=True).head(n).collect()
    else:
        rows = load_users(users, item_table, interaction_table).frame.head(n).collect()
    items_frame = item_table.frame.collect()
    config = PromptConfig(
        task=task,
        domain=resolve_domain(items_frame, domain),
        chat=chat,
        history_len=history_len,
        candidates=candidates,
        strategy=strategy.value,
        evaluation=evaluation,
        seed=seed,
        item_fields=_field_mapping(field or []),
    )
    built = build_prompts(rows, interaction_table.frame, items_frame, config)
    shown = built.drop("candidate_titles", strict=False)
    for row in shown.iter_rows(named=True):
        details = ", ".join(f"{k}={v}" for k, v in row.items() if k not in (key, "prompt"))
        console.rule(f"{key} {row[key]}", style="dim")
        console.print(details, style="dim", markup=False, highlight=False, soft_wrap=True)
        console.print(row["prompt"] or "(no prompt)", markup=False, highlight=False, soft_wrap=True)


def _field_mapping(pairs: list[str]) -> dict[str, str]:
    """`--field category=genres` pairs as a mapping."""
    malformed = [p for p in pairs if "=" not in p]
    if malformed:
        raise typer.BadParameter(
            f"expected FIELD=COLUMN, got {malformed[0]!r}", param_hint="--field"
        )
    return dict(p.split("=", 1) for p in pairs)


@app.command()
def shard(
    users: Annotated[Path, typer.Option(help="Users table (Parquet) to split.")],
    shards: Annotated[int, typer.Option(help="How many shards.")],
    out: Annotated[Path, typer.Option(help="Folder for shard-NNNNN-of-NNNNN.parquet.")],
    interactions: Annotated[
        Path | None,
        typer.Option(help="Also split these, into interactions-NNNNN-of-NNNNN.parquet."),
    ] = None,
    items: Annotated[
        Path | None, typer.Option(help="Items table (needed with --interactions).")
    ] = None,
) -> None:
    """Split users (and their interactions) by the stable hash of the user id: any shard count
    gives the same rows. With interactions, writes the whole log's item_counts.parquet too."""
    from itdr_batch.tables.shard import split, split_users

    if interactions is None or items is None:
        if interactions is not None or items is not None:
            raise ItdrError("--interactions and --items go together: give both or neither")
        paths = split_users(users, shards, out)
        console.print(f"{len(paths)} shards written to {escape(str(out))}/", highlight=False)
        _print_shard_rows("users", paths)
        return
    done = split(users, interactions, items, shards, out)
    console.print(f"{len(done.users)} shards written to {escape(str(out))}/", highlight=False)
    _print_shard_rows("users", done.users)
    _print_shard_rows("interactions", done.interactions)
    for reason, count in done.dropped.items():
        console.print(f"  interactions dropped ({reason}): {count}", highlight=False)
    counted = _parquet_rows(done.item_counts)
    console.print(f"  {done.item_counts.name}: {counted} items", highlight=False)


def _print_shard_rows(what: str, paths: list[Path]) -> None:
    rows = [_parquet_rows(p) for p in paths]
    shown = ", ".join(map(str, rows))
    console.print(f"  {what}: {sum(rows)} rows ({shown})", highlight=False)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    rows: int = pq.read_metadata(path).num_rows
    return rows


@app.command()
def score(
    ctx: typer.Context,
    users: Annotated[Path, typer.Option(help="Users shard (Parquet; TUI: a shard of item_id).")],
    config: Annotated[Path | None, typer.Option(help="Job configuration (TOML).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder \\[output.dir].")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Write the prompts and candidates instead of scores.")
    ] = False,
    format_: Annotated[
        PromptFormat | None,
        typer.Option(
            "--format",
            help="--dry-run output: parquet, or jsonl (also OpenAI batch requests) \\[parquet].",
        ),
    ] = None,
    task: Annotated[list[Task] | None, typer.Option(help="Task(s) \\[prompts.tasks].")] = None,
    interactions: Annotated[Path | None, typer.Option(help="\\[data.interactions]")] = None,
    items: Annotated[Path | None, typer.Option(help="\\[data.items]")] = None,
    model: Annotated[Path | None, typer.Option(help="Model folder \\[model.path].")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH, repeatable \\[adapters].")
    ] = None,
    engine: Annotated[Engine | None, typer.Option(help="\\[engine.kind]")] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="Scoring mode of every task \\[scoring.mode].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="\\[scoring.batch_size]")] = None,
    evaluation: Annotated[
        bool | None, typer.Option("--evaluation/--no-evaluation", help="\\[prompts.evaluation]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="\\[seed]")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any key: KEY=VALUE, VALUE in TOML (scoring.retries=3)."),
    ] = None,
) -> None:
    """Score a users shard: one Parquet file per task, rejects, and a manifest (resumable)."""
    if format_ is not None and not dry_run:
        raise typer.BadParameter("only a --dry-run writes prompts", param_hint="--format")
    flags: dict[str, object] = {
        "prompts.tasks": task and [str(t) for t in task],
        "data.interactions": interactions and str(interactions),
        "data.items": items and str(items),
        "model.path": model and str(model),
        "adapters": adapter and [_adapter(a) for a in adapter],
        "engine.kind": engine and engine.value,
        "scoring.mode": mode and mode.value,
        "scoring.batch_size": batch_size,
        "prompts.evaluation": evaluation,
        "seed": seed,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides |= dict(parse_override(pair) for pair in set_ or [])
    job_config = load_config(config, overrides)
    logs = _library_logs(ctx, Path(out or job_config.output.dir), models=not dry_run)
    result = run_job(job_config, users, out, dry_run=dry_run, reporter=_reporter())
    if format_ is PromptFormat.jsonl:
        result = replace(result, manifest=export_requests(result.out))
    print_run(result)
    _print_logs(logs)


@app.command("evaluate")
def evaluate_run(
    run: Annotated[
        Path,
        typer.Argument(
            help="Folder of a complete evaluation-mode run, or a night of shard runs (one run)."
        ),
    ],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Where the figures go [RUN/evaluation.json].")
    ] = None,
    interactions: Annotated[
        Path | None,
        typer.Option(
            help="The run's interactions table, moved (default: the manifest's path; same sha256)."
        ),
    ] = None,
) -> None:
    """Ranking, rating and text metrics of a run, next to random and popularity baselines."""
    from itdr_batch.evaluate import evaluation, render, run_folders, write_json
    from itdr_batch.position_bias import render_position_bias

    result = evaluation(run_folders(run) or [run], interactions).result
    path = json_path or run / "evaluation.json"
    write_json(result, path)
    console.print(render(result))
    if bias := render_position_bias(result):
        console.print(bias)
    console.print(f"written to {escape(str(path))}", highlight=False)


@app.command()
def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders, or nights of shard runs (out/nightly/NIGHT); the first is the "
            "reference the others are compared with."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page (no network): metrics with intervals, paired differences,
    position bias, rating calibration, score distributions, throughput and rejects."""
    from itdr_batch.report import build_report, write_report

    path = write_report(build_report(runs), out)
    console.print(f"report written to {escape(str(path))}", highlight=False)


@app.command()
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path(
        "out/demo"
    ),
    engine: Annotated[Engine, typer.Option(help="Inference engine.")] = Engine.auto,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="Tokenizer folder [../shared/data/qwen2.5-tokenizer, else trained]."),
    ] = None,
) -> None:
    """The whole job on the bundled MovieLens sample with an untrained tiny model, offline."""
    from itdr_batch.dev.demo import run_demo
    from itdr_batch.evaluate import render

    logs = _library_logs(ctx, out / "run")
    shown = run_demo(out, engine.value, tokenizer, _reporter())
    console.print(f"tokenizer: {escape(shown.tokenizer)}", highlight=False)
    print_run(shown.run)
    console.print(render(shown.evaluation))
    run = shown.run.out
    console.print(
        f"""
[bold]The tiny model is untrained[/]: these metrics show the pipeline working end to end,
not model quality (expect figures near the random baseline's).

Results are in {escape(str(run))}/ (the contract is in README.md, "Results"):
  tkr.parquet      one row per (user, candidate): rank, score, prob, label (held-out item)
  rp.parquet       one row per user: expected rating, argmax rating, label (true rating)
  rejects.parquet  users without a result, with the reason
  _manifest.json   run id, config, model and adapter hashes, counts, timings
  evaluation.json  the metrics above
  report.html      the same with intervals and charts (opens offline in a browser)
Read them with Polars:
  python -c "import polars as pl; print(pl.read_parquet('{escape(str(run))}/tkr.parquet'))"
Score again, or your own shard, with the same configuration:
  itdr-batch score --users {escape(str(shown.users))} --config {escape(str(shown.job))}""",
        highlight=False,
        soft_wrap=True,
    )
    _print_logs(logs)
    console.print(f"report: {escape(str(shown.report))}", highlight=False, soft_wrap=True)


def print_run(result: JobResult) -> None:
    """Where a run's files are, what they hold, and how fast it went."""
    manifest = result.manifest
    if result.skipped:
        console.print(f"run {manifest.run_id} was already complete: nothing to do")
    table = RichTable(title=f"run {manifest.run_id} ({manifest.counts.rows:,} rows)")
    for column in ("task", "adapter", "scored", "rejected", "reasons"):
        table.add_column(column, justify="right" if column in ("scored", "rejected") else "left")
    for task_name, adapters in manifest.counts.tasks.items():
        for name, counts in adapters.items():
            reasons = ", ".join(f"{r} {n:,}" for r, n in counts.reasons.items()) or "-"
            table.add_row(task_name, name, f"{counts.scored:,}", f"{counts.rejected:,}", reasons)
    console.print(table)
    for task_name, left_out in manifest.counts.left_out.items():
        what = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in left_out.items())
        console.print(f"{task_name}: left out of the prompts: {what}", highlight=False)
    speed = manifest.throughput
    if speed.prompts_per_s:
        line = f"{speed.prompts:,} prompts, {speed.prompts_per_s:,.1f} prompts/s"
        if speed.prompt_tokens_per_s:  # a dry run does not tokenize
            line += f", {speed.prompt_tokens_per_s:,.0f} prompt tokens/s"
        console.print(line, highlight=False)
    files = ", ".join(manifest.files.values())
    console.print(
        f"written to {escape(str(result.out))}/: {files}, _manifest.json", highlight=False
    )


def _library_logs(ctx: typer.Context, folder: Path, models: bool = True) -> Path:
    """The libraries' logs go to the run folder unless ``-v`` asked for them on the terminal."""
    verbose = ctx.find_root().params["verbose"]
    return library_logs_to(folder / LOG_FILE, verbose=verbose, models=models)


def _print_logs(path: Path) -> None:
    if path.is_file():
        console.print(f"library logs: {escape(str(path))}", highlight=False)


def _reporter() -> Reporter:
    if errors.is_terminal:
        return RichReporter(errors)
    return LogReporter(logging.getLogger("itdr_batch.run.job"))


def _adapter(pair: str) -> dict[str, str]:
    name, sep, path = pair.partition("=")
    if not sep:
        raise typer.BadParameter(f"expected NAME=PATH, got {pair!r}", param_hint="--adapter")
    return {"name": name, "path": path}


def _ingest(read: Callable[[], Ingested], out: Path) -> None:
    _print_summary(write_canonical(read(), out))


def _print_summary(summary: Summary) -> None:
    console.print(f"[bold]{escape(summary.source)}[/]", highlight=False)
    table = RichTable()
    for column in ("table", "read", "kept", "dropped"):
        table.add_column(column, justify="left" if column in ("table", "dropped") else "right")
    for name in ("interactions", "items", "users"):
        if name not in summary.read and name not in summary.kept:
            continue
        reasons = [f"{n:,} {why}" for (t, why), n in summary.dropped.items() if t == name]
        kept = summary.kept.get(name)
        table.add_row(
            name,
            f"{summary.read.get(name, 0):,}",
            "-" if kept is None else f"{kept:,}",
            "\n".join(reasons) or "-",
        )
    console.print(table)
    counts = f"users: {summary.users:,}  items: {summary.items:,}"
    console.print(f"{counts}  written to {escape(str(summary.out))}/", highlight=False)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
