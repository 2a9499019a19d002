"""``maskbank versions``: list a store's versions, delete one explicitly, and reclaim the space of what was
deleted.

``maskbank versions STORE`` lists (same as ``maskbank versions list STORE``). ``maskbank versions delete
STORE VERSION`` removes a version's tag and its groups (refused while another version names it as a parent
unless ``--force``); its data stays in older commits until ``maskbank versions gc STORE`` expires those and
deletes what nothing reaches any more.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Optional

import click
import typer

from maskbank.commands.helptext import PlainCommand, PlainGroup
from maskbank.commands.stores import StoreArg, fail, open_store
from maskbank.storage.layout import VERSION_KINDS


class _ListByDefault(PlainGroup):
    """A group whose first argument, when it names no subcommand, is the STORE (or an option) of ``list``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


VERSIONS_HELP = """A store's versions: list them (default), delete one, or reclaim the space of deleted ones (gc).

Every run publishes versions: pseudo_labels (the labels of the labelled images), bank (their class
prototypes), predictions (the labels of the images to label) and evaluation (a score against pixel truth).
A version never changes once published.

\b
Example:
  maskbank versions photos-store
  maskbank versions photos-store --kind predictions --json
  maskbank versions delete photos-store 3f2a0c1d9e8b7a65
  maskbank versions gc photos-store"""

versions_app = typer.Typer(cls=_ListByDefault, help=VERSIONS_HELP, no_args_is_help=True)


@versions_app.command("list", cls=PlainCommand)
def list_command(
    store: StoreArg,
    kind: Annotated[Optional[str], typer.Option(metavar="KIND", help=f"Only this kind: {', '.join(VERSION_KINDS)}.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the store's versions: kind, time, parents, metric, datasets, classes and settings.

    \b
    Example:
      maskbank versions list photos-store
      # only the labels of the images to label
      maskbank versions photos-store --kind predictions
    """
    from maskbank.commands.describe import Datasets, version_lines
    from maskbank.commands.tree import headline
    from maskbank.storage.versions import list_versions

    if kind is not None and kind not in VERSION_KINDS:
        fail(f"unknown version kind {kind!r}; kinds are {', '.join(VERSION_KINDS)}")
    st = open_store(store)
    every = list_versions(st)
    infos = [v for v in every if kind is None or v.kind == kind]
    if as_json:
        typer.echo(json.dumps([v.__dict__ for v in infos], indent=2, default=str))
        return
    datasets = Datasets(st)
    for v in infos:
        metric = headline(v, every)
        parents = ",".join(v.parents) or "-"
        typer.echo(f"{v.id}  {v.kind:<13} {v.created[:19]}  parents {parents}" + (f"  {metric}" if metric else ""))
        for line in [f"tag {v.tag}", *version_lines(v, datasets)]:
            typer.echo(f"    {line}")


@versions_app.command("delete", cls=PlainCommand)
def delete_command(
    store: StoreArg,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="Version id (16 hex digits).")],
    force: Annotated[bool, typer.Option("--force", help="Delete even if other versions name it as a parent.")] = False,
) -> None:
    """Delete a version: its tag, its arrays and its label maps (refused while others depend on it).

    Refused while other versions name it as a parent, unless --force. Its data stays in older commits until
    `maskbank versions gc` reclaims it.

    \b
    Example:
      maskbank versions delete photos-store 3f2a0c1d9e8b7a65
    """
    from maskbank.storage.layout import labels_group
    from maskbank.storage.store import MissingItemError
    from maskbank.storage.versions import VersionInUseError, children, delete_version, get_version

    st = open_store(store)
    try:
        info = get_version(st, version)
        had_maps = st.exists(labels_group(version))
        delete_version(st, version, force=force)
    except ValueError as e:
        fail(str(e), 1)
    except MissingItemError:
        fail(f"no version {version} in {st.url}", 1)
    except VersionInUseError:
        users = ", ".join(children(st, version))
        typer.echo(f"refused: version {version} is a parent of {users}; pass --force to delete it anyway", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"deleted {info.kind} version {version} (tag {info.tag})" + (" and its label maps" if had_maps else ""))
    typer.echo(f"its data stays in older commits until `maskbank versions gc {st.url}` reclaims it")


@versions_app.command("gc", cls=PlainCommand)
def gc_command(
    store: StoreArg,
    older_than: Annotated[float, typer.Option(metavar="HOURS", help="Expire commits, and delete unreachable data, older than this many hours.", min=0.0)] = 24.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted now; expire and delete nothing.")] = False,
) -> None:
    """Reclaim space: delete the data of deleted versions and of replaced outputs.

    Expires the commits older than --older-than that no version tag or branch points at, then deletes every
    chunk, manifest and commit that nothing reaches any more. Data younger than --older-than is kept, so a
    run writing meanwhile loses nothing.

    \b
    Example:
      maskbank versions gc photos-store --dry-run
      maskbank versions gc photos-store --older-than 0
    """
    from maskbank.storage.versions import collect_garbage

    st = open_store(store)
    done = collect_garbage(st, timedelta(hours=older_than), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    if not dry_run:
        typer.echo(f"expired {done['snapshots_expired']} commits older than {older_than:g} h")
    typer.echo(f"{verb} {done['chunks_deleted']} chunks, {done['manifests_deleted']} manifests, "
               f"{done['snapshots_deleted']} commits: {_bytes(done['bytes_deleted'])}")
    if dry_run:
        typer.echo("(a dry run expires no commits, so it counts only what no commit reaches already; "
                   "a real run also frees the data that only the expired commits reach)")


def _bytes(n: int) -> str:
    from maskbank.commands.tree import human_bytes

    return human_bytes(n)


def register(app: typer.Typer) -> None:
    """Mount ``maskbank versions`` (list, delete, gc) on ``app``."""
    app.add_typer(versions_app, name="versions")
