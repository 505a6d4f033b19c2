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
    model: Annotated[
        str,
        typer.Option(
            help="tiny (the tests' model: its output layer dominates) or body (a Qwen2 whose "
            "body dominates a token's cost, as in Qwen2.5-7B)."
        ),
    ] = "tiny",
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder for the tiny model.")] = Path(
        "../shared/data/qwen2.5-tokenizer"
    ),
    engines: Annotated[list[str], typer.Option("--engine", help="vllm and/or hf.")] = [  # noqa: B006
        "vllm",
        "hf",
    ],
    workdir: Annotated[Path, typer.Option(help="Where the models are built (cached).")] = Path(
        "benchmarks/results/models"
    ),
    json_path: Annotated[Path, typer.Option("--json", help="Where the figures go.")] = Path(
        "benchmarks/results/engines.json"
    ),
) -> None:
    """Engines x scoring modes: prompts/s, prompt tokens/s, computed tokens, agreement."""
    from itdr_batch.bench import engines as bench_module

    if unknown := sorted(set(engines) - {"vllm", "hf"}):
        raise ItdrError(f"--engine must be vllm or hf, not {', '.join(unknown)}")
    if model not in bench_module.MODELS:
        raise ItdrError(f"--model must be {' or '.join(bench_module.MODELS)}, not {model!r}")
    if model == "tiny" and not tokenizer.is_dir():
        raise ItdrError(f"tokenizer folder {tokenizer} not found")
    source = data if data.is_dir() else SAMPLE
    figures = bench_module.run(users, source, tokenizer, workdir, engines, model)
    write_json_atomic(figures, json_path)
    table = RichTable(
        title=f"{figures['model_description']}: {figures['users']} users, "
        f"mean prompt {figures['mean_prompt_tokens']:.0f} tokens"
    )
    columns = ("engine", "mode", "prompts/s", "tokens/s", "computed/prompt token", "base prompts/s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("engine", "mode") else "right")
    for name, modes in figures["engines"].items():
        for mode in ("prefill", "likelihood", "label", "generate"):
            values = modes[mode]
            table.add_row(
                name,
                mode,
                f"{values['prompts_per_s']:,.1f}",
                f"{values['tokens_per_s']:,.0f}",
                f"{values['computed_tokens_per_prompt_token']:.2f}",
                f"{values['base']['prompts_per_s']:,.1f}",
            )
    console.print(table)
    for name, modes in figures["engines"].items():
        console.print(
            f"{name}: likelihood costs {modes['likelihood_over_prefill']:.2f}x one prefill with "
            f"the adapter, {modes['likelihood_over_prefill_base']:.2f}x on the base model "
            f"(goal <= {figures['likelihood_over_prefill_goal']}); {modes['likelihood_path']}",
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
    """`score --dry-run` over shards of growing size, sorted and shuffled logs: prompts/s against
    the Rust core's, and peak RSS (it should stay flat)."""
    from itdr_batch.bench import job as bench_module

    sizes = sorted(sizes or [10_000, 100_000, 1_000_000])
    source = data if data.is_dir() else SAMPLE
    figures = bench_module.run(sizes, batch_size, source, workdir)
    write_json_atomic(figures, json_path)
    table = RichTable(
        title=f"score --dry-run, TKR, batch {batch_size:,}, "
        f"{figures['interactions_rows']:,} interactions"
    )
    for column in ("users", "log", "peak RSS MiB", "seconds", "prompts/s"):
        table.add_column(column, justify="right")
    for size in sizes:
        for order, values in figures["sizes"][str(size)].items():
            table.add_row(
                f"{size:,}",
                order,
                f"{values['peak_rss_mb']:,.0f}",
                f"{values['seconds']:,.1f}",
                f"{values['prompts_per_s']:,.0f}",
            )
    console.print(table)
    ratios, goals = figures["ratios"], figures["goals"]
    before, after = figures["core_prompts_per_s_runs"]
    per_size = ", ".join(
        f"{int(n):,}: {r:.1f}x" for n, r in ratios["core_over_job_by_size"].items()
    )
    if ratios["core_over_marginal"] is not None:
        per_size += f", marginal {ratios['core_over_marginal']:.1f}x"
    console.print(
        f"Rust core: {figures['core_prompts_per_s']:,.0f} prompts/s "
        f"({figures['core_users']:,} users; {before:,.0f} before the shards, {after:,.0f} after); "
        f"core / slowest job {ratios['core_over_job']:.1f}x (goal <= "
        f"{goals['core_over_job_max']:g}), per size {per_size}; shuffled / "
        f"sorted {ratios['shuffled_over_sorted']:.2f}x (goal <= "
        f"{goals['shuffled_over_sorted_max']:g}); peak RSS largest / smallest shard "
        f"{ratios['rss_ratio_largest_to_smallest']:.2f}x (goal <= {goals['rss_ratio_max']:g})",
        highlight=False,
    )
    console.print(f"written to {escape(str(json_path))}", highlight=False)


@app.command("orders")
def bench_orders(
    users: Annotated[int, typer.Option(help="MovieLens users (one TKR list each).")] = 100,
    orders: Annotated[
        list[int] | None, typer.Option("--orders", help="K to compare with K = 1 [3].")
    ] = None,
    engine: Annotated[str, typer.Option(help="vllm or hf.")] = "vllm",
    model: Annotated[str, typer.Option(help="tiny or body (as bench engines).")] = "tiny",
    data: Annotated[Path, typer.Option(help="MovieLens folder the users come from.")] = Path(
        "../shared/data/movielens-latest-small"
    ),
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder for the tiny model.")] = Path(
        "../shared/data/qwen2.5-tokenizer"
    ),
    workdir: Annotated[Path, typer.Option(help="Where models, tables and runs go.")] = Path(
        "benchmarks/results/orders"
    ),
    json_path: Annotated[Path, typer.Option("--json", help="Where the figures go.")] = Path(
        "benchmarks/results/orders.json"
    ),
) -> None:
    """Presentation orders (scoring.permutations): cost and position bias of K against K = 1."""
    from itdr_batch.bench import engines as engines_module
    from itdr_batch.bench import orders as bench_module

    if engine not in ("vllm", "hf"):
        raise ItdrError(f"--engine must be vllm or hf, not {engine!r}")
    if model not in engines_module.MODELS:
        raise ItdrError(f"--model must be {' or '.join(engines_module.MODELS)}, not {model!r}")
    if bad := [k for k in orders or [] if not 1 <= k <= bench_module.CANDIDATES]:
        raise ItdrError(f"--orders must be between 1 and {bench_module.CANDIDATES}, not {bad}")
    source = data if data.is_dir() else SAMPLE
    figures = bench_module.run(users, orders or [3], source, tokenizer, workdir, engine, model)
    write_json_atomic(figures, json_path)
    table = RichTable(title=f"TKR likelihood, {users} users, {engine}, {model} model, adapter a1")
    # Per prompt token: computed, and served from the prefix cache; p: top-1 positions uniform.
    columns = ("K", "s", "x K=1", "tokens/user", "computed", "cached", "hr@1", "p", "tau")
    for column in columns:
        table.add_column(column, justify="right")
    for k, values in figures["orders"].items():
        cells = (values["hr@1"], values["top1_uniform_p"], values["kendall_tau"])
        table.add_row(
            k,
            f"{values['seconds']:.1f}",
            f"{figures['over_one_order'][k]['seconds']:.2f}",
            f"{values['prompt_tokens_per_user']:,.0f}",
            f"{values['computed_per_prompt_token']:.2f}",
            f"{values['cached_per_prompt_token']:.2f}",
            *("-" if v is None else f"{v:.3f}" for v in cells),
        )
    console.print(table)
    console.print(f"written to {escape(str(json_path))}", highlight=False)
