"""``maskbank weights``: list the known checkpoints and fetch them into the weights cache."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from maskbank.commands.helptext import PlainCommand, PlainGroup
from maskbank.commands.stores import error
from maskbank.storage.weights import (
    DEFAULT_BACKBONE,
    DEFAULT_PROPOSER,
    REGISTRY,
    WeightsError,
    cached,
    fetch,
    weights_cache_dir,
)

WEIGHTS_HELP = """Model weights: list the registry, fetch checkpoints into the local cache (verified by sha256).

A run fetches the checkpoints it needs itself; fetch them first to run offline later ($MASKBANK_OFFLINE=1).

\b
Example:
  maskbank weights list
  maskbank weights fetch"""

weights_app = typer.Typer(cls=PlainGroup, help=WEIGHTS_HELP, no_args_is_help=True)

CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", metavar="FOLDER", help="Weights cache root (default: $MASKBANK_CACHE_DIR or the user cache dir)."),
]


def _size(n: int | None) -> str:
    return f"{n / 1e6:,.1f} MB" if n else "-"


@weights_app.command("list", cls=PlainCommand)
def list_weights(cache_dir: CacheDirOption = None) -> None:
    """Show every registered checkpoint: role, size, whether it is cached, and its sources in order.

    \b
    Example:
      maskbank weights list
    """
    table = Table(title=f"weights cache: {weights_cache_dir(cache_dir)}")
    for column in ("name", "role", "size", "cached"):
        table.add_column(column, no_wrap=True)
    table.add_column("sources, in order")
    for name, ckpt in REGISTRY.items():
        table.add_row(
            name,
            ckpt.role,
            _size(ckpt.size),
            "yes" if cached(name, cache_dir) else "no",
            " > ".join(f"{s.label} (huggingface {s.hf_repo}@{s.hf_revision or 'main'})" if s.kind == "hf" else s.label
                       for s in ckpt.sources),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@weights_app.command("fetch", cls=PlainCommand)
def fetch_weights(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME...",
            help=f"Checkpoint names, or hf:<repo_id> / hf:<repo_id>@<revision> (default: {DEFAULT_PROPOSER} "
            f"{DEFAULT_BACKBONE})."
        ),
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Use the cache only (also $MASKBANK_OFFLINE=1).")] = False,
    cache_dir: CacheDirOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Download, verify and cache checkpoints; print where each one lives.

    \b
    Example:
      # the default models of a run
      maskbank weights fetch
      maskbank weights fetch sam_vit_b
    """
    failed = False
    for name in names or [DEFAULT_PROPOSER, DEFAULT_BACKBONE]:
        start = time.perf_counter()
        try:
            path = fetch(name, offline=True if offline else None, cache_dir=cache_dir, progress=not quiet)
        except WeightsError as e:
            error(str(e))
            failed = True
            continue
        typer.echo(f"{name}: {path} ({time.perf_counter() - start:.1f} s)")
    if failed:
        raise typer.Exit(1)
