"""The ``itdr-batch`` command line (Typer): every command calls the same job code as the flows."""

import logging
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table as RichTable

from itdr_batch.config import load_config, parse_override
from itdr_batch.datasets import (
    SAMPLE,
    Ingested,
    IngestError,
    Summary,
    read_amazon2018,
    read_movielens,
    read_recbole,
    write_canonical,
)
from itdr_batch.job import EngineCrashed, JobResult, run_job
from itdr_batch.progress import LogReporter, Reporter, RichReporter
from itdr_batch.prompts import PromptConfig, build_prompts
from itdr_batch.scoring import Mode
from itdr_batch.sink import write_json_atomic
from itdr_batch.tables import TableError, load_interactions, load_items, load_users
from itdr_batch.tasks import DOMAINS, Task


class Engine(StrEnum):
    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class Strategy(StrEnum):
    uniform = "uniform"
    popularity = "popularity"


app = typer.Typer(no_args_is_help=True, help="Offline batch scoring of LLM recommenders (ITDR).")
ingest = typer.Typer(no_args_is_help=True, help="Turn a public dataset into canonical Parquet.")
app.add_typer(ingest, name="ingest")
bench = typer.Typer(no_args_is_help=True, help="Benchmarks: figures and ratios, written as JSON.")
app.add_typer(bench, name="bench")

console = Console()
errors = Console(stderr=True)


@app.callback()
def setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Logs go to stderr, so that stdout carries only what a command prints."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False, markup=False)],
        force=True,
    )


Out = Annotated[Path, typer.Option("--out", help="Folder for the canonical Parquet files.")]


@ingest.command("movielens")
def ingest_movielens(
    out: Out,
    src: Annotated[
        Path | None,
        typer.Argument(help="ml-latest-small, ml-100k or ml-1m folder (default: bundled sample)."),
    ] = None,
) -> None:
    """MovieLens latest-small (CSV), 100k or 1m, detected from the folder's files."""
    _ingest(lambda: read_movielens(src or SAMPLE), out)


@ingest.command("amazon2018")
def ingest_amazon2018(
    reviews: Annotated[Path, typer.Option(help="Reviews JSON lines (.json or .json.gz).")],
    meta: Annotated[Path, typer.Option(help="Metadata JSON lines (.json or .json.gz).")],
    out: Out,
    domain: Annotated[str | None, typer.Option(help="Domain name given to every item.")] = None,
) -> None:
    """Amazon Review Data (2018): one category's reviews and metadata files."""
    _ingest(lambda: read_amazon2018(reviews, meta, domain), out)


@ingest.command("recbole")
def ingest_recbole(
    inter: Annotated[Path, typer.Option(help="Atomic .inter file (interactions or sequences).")],
    item: Annotated[Path, typer.Option(help="Atomic .item file.")],
    out: Out,
) -> None:
    """RecBole atomic files."""
    _ingest(lambda: read_recbole(inter, item), out)


@app.command()
def prompts(
    task: Annotated[Task, typer.Option(help="ITDR subtask.")],
    interactions: Annotated[Path, typer.Option(help="Canonical interactions Parquet.")],
    items: Annotated[Path, typer.Option(help="Canonical items Parquet.")],
    users: Annotated[
        Path | None, typer.Option(help="Users shard (TUI: item ids); default: the first users.")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="How many prompts to print.")] = 3,
    domain: Annotated[str, typer.Option(help=f"Domain words: {', '.join(DOMAINS)}.")] = "movie",
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
    try:
        item_table = load_items(items)
        interaction_table = load_interactions(interactions, item_table)
        key = "item_id" if task is Task.TUI else "user_id"
        if users is None:
            source = item_table if task is Task.TUI else interaction_table
            rows = source.frame.select(key).unique(maintain_order=True).head(n).collect()
        else:
            rows = load_users(users, item_table).frame.head(n).collect()
        config = PromptConfig(
            task=task,
            domain=domain,
            chat=chat,
            history_len=history_len,
            candidates=candidates,
            strategy=strategy.value,
            evaluation=evaluation,
            seed=seed,
            item_fields=_field_mapping(field or []),
        )
        built = build_prompts(rows, interaction_table.frame, item_table.frame.collect(), config)
    except (TableError, ValueError) as exc:
        _fail(exc)
    for row in built.iter_rows(named=True):
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


@bench.command("prompts")
def bench_prompts(
    users: Annotated[int, typer.Option(help="Synthetic users (replicated histories).")] = 1_000_000,
    python_users: Annotated[
        int, typer.Option(help="Users for the (slow) pure-Python implementation.")
    ] = 200_000,
    data: Annotated[
        Path, typer.Option(help="MovieLens folder whose histories are replicated.")
    ] = Path("../shared/data/movielens-latest-small"),
    json_path: Annotated[Path, typer.Option("--json", help="Where the figures go.")] = Path(
        "benchmarks/results/prompts.json"
    ),
) -> None:
    """Prompt construction: Rust vs pure Python vs Polars vs the memory floor; sampling rate."""
    from itdr_batch.bench import prompts as bench_module

    source = data if data.is_dir() else SAMPLE
    if source != data:
        errors.print(f"{data} not found: replicating the bundled sample instead", highlight=False)
    figures = bench_module.run(users, python_users, source)
    write_json_atomic(figures, json_path)
    table = RichTable(title=f"TKR prompts, {users:,} users, {figures['threads']} threads")
    for column in ("implementation", "prompts/s", "rust speed-up", "byte-identical"):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    rust_rate = figures["prompts_per_s"]["rust"]
    for name, rate in figures["prompts_per_s"].items():
        same = figures["byte_identical"].get(name)
        table.add_row(
            name,
            f"{rate:,.0f}",
            f"{rust_rate / rate:.2f}",
            "-" if same is None else ("yes" if same else "NO"),
        )
    console.print(table)
    per_core = figures["candidates_per_s_per_core"]
    console.print(
        f"sampling: {figures['candidates_per_s']:,.0f} candidates/s ({per_core:,.0f} per core); "
        f"mean prompt {figures['mean_prompt_bytes']:.0f} B; Polars preparation "
        f"{figures['prep_s']:.1f} s; targets met: {figures['targets_met']}",
        highlight=False,
    )
    console.print(f"written to {escape(str(json_path))}", highlight=False)


@bench.command("engines")
def bench_engines(
    users: Annotated[
        int, typer.Option(help="MovieLens users (one TKR and one RP prompt each).")
    ] = 48,
    data: Annotated[Path, typer.Option(help="MovieLens folder the prompts are built from.")] = Path(
        "../shared/data/movielens-latest-small"
    ),
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder for the tiny model.")] = Path(
        "../shared/data/qwen2.5-tokenizer"
    ),
    engines: Annotated[list[str], typer.Option("--engine", help="vllm and/or hf.")] = [  # noqa: B006
        "vllm",
        "hf",
    ],
    workdir: Annotated[Path, typer.Option(help="Where the tiny model is built (cached).")] = Path(
        "benchmarks/results/tiny"
    ),
    json_path: Annotated[Path, typer.Option("--json", help="Where the figures go.")] = Path(
        "benchmarks/results/engines.json"
    ),
) -> None:
    """Engines x scoring modes on the tiny model: prompts/s, prompt tokens/s, agreement."""
    from itdr_batch.bench import engines as bench_module

    if unknown := sorted(set(engines) - {"vllm", "hf"}):
        _fail(ValueError(f"--engine must be vllm or hf, not {', '.join(unknown)}"))
    if not tokenizer.is_dir():
        _fail(FileNotFoundError(f"tokenizer folder {tokenizer} not found"))
    source = data if data.is_dir() else SAMPLE
    figures = bench_module.run(users, source, tokenizer, workdir, engines)
    write_json_atomic(figures, json_path)
    table = RichTable(
        title=f"{figures['users']} users, mean prompt {figures['mean_prompt_tokens']:.0f} tokens"
    )
    for column in ("engine", "mode", "prompts/s", "tokens/s", "base prompts/s"):
        table.add_column(column, justify="left" if column in ("engine", "mode") else "right")
    for name, modes in figures["engines"].items():
        for mode in ("prefill", "likelihood", "label", "generate"):
            values = modes[mode]
            table.add_row(
                name,
                mode,
                f"{values['prompts_per_s']:,.1f}",
                f"{values['tokens_per_s']:,.0f}",
                f"{values['base']['prompts_per_s']:,.1f}",
            )
    console.print(table)
    for name, modes in figures["engines"].items():
        console.print(
            f"{name}: likelihood costs {modes['likelihood_over_prefill']:.2f}x one prefill "
            f"(goal <= {figures['likelihood_over_prefill_goal']})",
            highlight=False,
        )
    diff = figures["agreement"]["max_abs_logprob_diff"]
    if diff is not None:
        console.print(f"vLLM vs transformers: max |logprob diff| {diff:.2e} (float32)")
    console.print(f"written to {escape(str(json_path))}", highlight=False)


@app.command()
def shard(
    users: Annotated[Path, typer.Option(help="Users table (Parquet) to split.")],
    shards: Annotated[int, typer.Option(help="How many shards.")],
    out: Annotated[Path, typer.Option(help="Folder for shard-NNNNN-of-NNNNN.parquet.")],
) -> None:
    """Split users by the stable hash of their id: any shard count gives the same rows."""
    from itdr_batch.shard import split_users

    try:
        paths = split_users(users, shards, out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"{len(paths)} shards written to {escape(str(out))}/", highlight=False)


@app.command()
def score(
    users: Annotated[Path, typer.Option(help="Users shard (Parquet; TUI: a shard of item_id).")],
    config: Annotated[Path | None, typer.Option(help="Job configuration (TOML).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder [output.dir].")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Write the prompts and candidates instead of scores.")
    ] = False,
    task: Annotated[list[Task] | None, typer.Option(help="Task(s) [prompts.tasks].")] = None,
    interactions: Annotated[Path | None, typer.Option(help="[data.interactions]")] = None,
    items: Annotated[Path | None, typer.Option(help="[data.items]")] = None,
    model: Annotated[Path | None, typer.Option(help="Model folder [model.path].")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH, repeatable [adapters].")
    ] = None,
    engine: Annotated[Engine | None, typer.Option(help="[engine.kind]")] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="Scoring mode of every task [scoring.mode].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="[scoring.batch_size]")] = None,
    evaluation: Annotated[
        bool | None, typer.Option("--evaluation/--no-evaluation", help="[prompts.evaluation]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="[seed]")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any key: KEY=VALUE, VALUE in TOML (scoring.retries=3)."),
    ] = None,
) -> None:
    """Score a users shard: one Parquet file per task, rejects, and a manifest (resumable)."""
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
    try:
        overrides = {k: v for k, v in flags.items() if v is not None}
        overrides |= dict(parse_override(pair) for pair in set_ or [])
        job_config = load_config(config, overrides)
        result = run_job(job_config, users, out, dry_run=dry_run, reporter=_reporter())
    except EngineCrashed as exc:
        errors.print(f"[bold red]engine failure:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    print_run(result)


@app.command("evaluate")
def evaluate_run(
    run: Annotated[Path, typer.Argument(help="Folder of a complete evaluation-mode run.")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Where the figures go [RUN/evaluation.json].")
    ] = None,
) -> None:
    """Ranking, rating and text metrics of a run, next to random and popularity baselines."""
    from itdr_batch.evaluate import EvaluationError, evaluate, render, write_json

    try:
        result = evaluate(run)
    except EvaluationError as exc:
        _fail(exc)
    path = json_path or run / "evaluation.json"
    write_json(result, path)
    console.print(render(result))
    console.print(f"written to {escape(str(path))}", highlight=False)


@app.command()
def demo(
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
    from itdr_batch.demo import run_demo
    from itdr_batch.evaluate import render

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
Read them with Polars:
  python -c "import polars as pl; print(pl.read_parquet('{escape(str(run))}/tkr.parquet'))"
Score again, or your own shard, with the same configuration:
  itdr-batch score --users {escape(str(shown.users))} --config {escape(str(shown.job))}""",
        highlight=False,
        soft_wrap=True,
    )


def print_run(result: JobResult) -> None:
    """Where a run's files are, what they hold, and how fast it went."""
    manifest = result.manifest
    if result.skipped:
        console.print(f"run {manifest['run_id']} was already complete: nothing to do")
    table = RichTable(title=f"run {manifest['run_id']} ({manifest['counts']['rows']:,} rows)")
    for column in ("task", "adapter", "scored", "rejected", "reasons"):
        table.add_column(column, justify="right" if column in ("scored", "rejected") else "left")
    for task_name, adapters in manifest["counts"]["tasks"].items():
        for name, counts in adapters.items():
            reasons = ", ".join(f"{r} {n:,}" for r, n in counts["reasons"].items()) or "-"
            table.add_row(
                task_name, name, f"{counts['scored']:,}", f"{counts['rejected']:,}", reasons
            )
    console.print(table)
    speed = manifest["throughput"]
    if speed["prompts_per_s"]:
        line = f"{speed['prompts']:,} prompts, {speed['prompts_per_s']:,.1f} prompts/s"
        if speed["prompt_tokens_per_s"]:  # a dry run does not tokenize
            line += f", {speed['prompt_tokens_per_s']:,.0f} prompt tokens/s"
        console.print(line, highlight=False)
    files = ", ".join(manifest["files"].values())
    console.print(
        f"written to {escape(str(result.out))}/: {files}, _manifest.json", highlight=False
    )


def _reporter() -> Reporter:
    if errors.is_terminal:
        return RichReporter(errors)
    return LogReporter(logging.getLogger("itdr_batch.job"))


def _adapter(pair: str) -> dict[str, str]:
    name, sep, path = pair.partition("=")
    if not sep:
        raise typer.BadParameter(f"expected NAME=PATH, got {pair!r}", param_hint="--adapter")
    return {"name": name, "path": path}


@bench.command("job")
def bench_job(
    sizes: Annotated[
        list[int] | None,
        typer.Option("--size", help="Shard sizes (users), repeatable [10k, 100k, 1M]."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Users per batch.")] = 10_000,
    data: Annotated[
        Path, typer.Option(help="MovieLens folder whose histories are replicated.")
    ] = Path("../shared/data/movielens-latest-small"),
    workdir: Annotated[Path, typer.Option(help="Where the shards and runs go.")] = Path(
        "benchmarks/results/job"
    ),
    json_path: Annotated[Path, typer.Option("--json", help="Where the figures go.")] = Path(
        "benchmarks/results/job.json"
    ),
) -> None:
    """Peak RSS of `score --dry-run` over shards of growing size: it should stay flat."""
    from itdr_batch.bench import job as bench_module

    sizes = sorted(sizes or [10_000, 100_000, 1_000_000])
    source = data if data.is_dir() else SAMPLE
    figures = bench_module.run(sizes, batch_size, source, workdir)
    write_json_atomic(figures, json_path)
    table = RichTable(
        title=f"score --dry-run, TKR, batch {batch_size:,}, "
        f"{figures['interactions_rows']:,} interactions"
    )
    for column in ("users", "peak RSS MiB", "seconds", "prompts/s"):
        table.add_column(column, justify="right")
    for size in sizes:
        key = str(size)
        table.add_row(
            f"{size:,}",
            f"{figures['peak_rss_mb'][key]:,.0f}",
            f"{figures['seconds'][key]:,.1f}",
            f"{figures['prompts_per_s'][key]:,.0f}",
        )
    console.print(table)
    console.print(
        f"peak RSS, largest / smallest shard: {figures['rss_ratio_largest_to_smallest']:.2f}x",
        highlight=False,
    )
    console.print(f"written to {escape(str(json_path))}", highlight=False)


def _ingest(read: Callable[[], Ingested], out: Path) -> None:
    try:
        summary = write_canonical(read(), out)
    except (IngestError, TableError) as exc:
        _fail(exc)
    _print_summary(summary)


def _fail(exc: Exception) -> NoReturn:
    """Bad input ends the command with its message and exit status 2, without a traceback."""
    errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from exc


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
