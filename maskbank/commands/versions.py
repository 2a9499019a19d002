"""``maskbank versions``: list a store's versions, and delete one explicitly.

``maskbank versions STORE`` lists (same as ``maskbank versions list STORE``); ``maskbank versions delete
STORE VERSION`` deletes a version and its label maps, refused while another version names it as a parent
unless ``--force``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from maskbank.storage.store import MissingItemError, NotAStoreError, Store
from maskbank.storage.versions import VersionInUseError, children, delete_version, get_version, list_versions

StoreArg = Annotated[Path, typer.Argument(help="Zarr store path.")]


class _ListByDefault(TyperGroup):
    """A group whose first argument, when it names no subcommand, is the STORE of ``list``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().resolve_command(ctx, args)


versions_app = typer.Typer(
    cls=_ListByDefault,
    help="A store's versions: list them (default), or delete one.",
    no_args_is_help=True,
)


def _open(store: Path) -> Store:
    try:
        return Store.open(store, create=False)
    except NotAStoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@versions_app.command("list")
def list_command(
    store: StoreArg,
    kind: Annotated[
        Optional[str], typer.Option(help="Only this kind: pseudo_labels, bank, predictions, evaluation.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the store's versions with their parameters, parents, time and metrics."""
    infos = list_versions(_open(store), kind)
    if as_json:
        typer.echo(json.dumps([v.__dict__ for v in infos], indent=2, default=str))
        return
    for v in infos:
        metric = ""
        if v.metrics and "classes" in v.metrics:
            metric = f"  mIoU {v.metrics['classes']['miou']:.4f}"
            if "voc21" in v.metrics:
                metric += f"  VOC-21 {v.metrics['voc21']['miou']:.4f}"
        elif v.metrics and "prototypes" in v.metrics:
            metric = f"  {v.metrics['prototypes']} prototypes"
        parents = ",".join(v.parents) or "-"
        typer.echo(f"{v.id}  {v.kind:<13} {v.created[:19]}  parents {parents}{metric}")
        typer.echo(f"    params {json.dumps(v.params, sort_keys=True)[:300]}")


@versions_app.command("delete")
def delete_command(
    store: StoreArg,
    version: Annotated[str, typer.Argument(help="Version id (16 hex digits).")],
    force: Annotated[bool, typer.Option("--force", help="Delete even if other versions name it as a parent.")] = False,
) -> None:
    """Delete a version and its label maps; refused while other versions depend on it, unless --force."""
    from maskbank.flows.stages.labelmaps import LABELS

    st = _open(store)
    try:
        kind = get_version(st, version).kind
        delete_version(st, version, force=force)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except MissingItemError:
        typer.echo(f"error: no version {version} in {st.path}", err=True)
        raise typer.Exit(1) from None
    except VersionInUseError:
        users = ", ".join(children(st, version))
        typer.echo(f"refused: version {version} is a parent of {users}; pass --force to delete it anyway", err=True)
        raise typer.Exit(1) from None
    maps = st.delete_path(f"{LABELS}/{version}")
    typer.echo(f"deleted {kind} version {version}" + (" and its label maps" if maps else ""))


def register(app: typer.Typer) -> None:
    """Mount ``maskbank versions`` (list, delete) on ``app``."""
    app.add_typer(versions_app, name="versions")
