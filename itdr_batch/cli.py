"""The ``itdr-batch`` command line (Typer): every command calls the same job code as the flows."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table as RichTable

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
from itdr_batch.tables import TableError

app = typer.Typer(no_args_is_help=True, help="Offline batch scoring of LLM recommenders (ITDR).")
ingest = typer.Typer(no_args_is_help=True, help="Turn a public dataset into canonical Parquet.")
app.add_typer(ingest, name="ingest")

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


def _ingest(read: Callable[[], Ingested], out: Path) -> None:
    try:
        summary = write_canonical(read(), out)
    except (IngestError, TableError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    _print_summary(summary)


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
