"""`itdr-batch bench`: the benchmarks' commands (README, "Benchmarks").

Each command runs one benchmark module, writes its figures as JSON and prints a summary table.
The modules are imported inside the commands: they pull in torch, vLLM and friends, which the
rest of the command line does not need. Bad options raise ``ItdrError``, which the root command
line turns into ``error: <message>`` and exit status 2.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from itdr_batch.datasets import SAMPLE
from itdr_batch.errors import ItdrError
from itdr_batch.tables.sink import write_json_atomic

app = typer.Typer(no_args_is_help=True, help="Benchmarks: figures and ratios, written as JSON.")

console = Console()
errors = Console(stderr=True)


@app.command("prompts")
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


@app.command("engines")
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
        raise ItdrError(f"--engine must be vllm or hf, not {', '.join(unknown)}")
    if not tokenizer.is_dir():
        raise ItdrError(f"tokenizer folder {tokenizer} not found")
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


@app.command("job")
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
