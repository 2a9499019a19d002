"""Opening a store for a command: a location string (a path or an s3://, gs://, az:// URL), optionally as of
one of its versions; what cannot be opened is a one-line ``error: ...`` and exit code 2.

:func:`fail` (and :func:`error`) is where every command prints its errors, one line each; ``maskbank
--debug`` makes them re-raise the exception behind the line instead, traceback and all."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer

STORE_HELP = "store path or s3:// gs:// az:// URL"
StoreArg = Annotated[str, typer.Argument(help=STORE_HELP, metavar="STORE", show_default=False)]

_debug = False
"""Whether ``maskbank --debug`` is on: errors re-raise the exception behind them instead of one line."""


def set_debug(on: bool) -> None:
    """Turn ``--debug`` on or off for the errors that follow."""
    global _debug
    _debug = on


def error(message: str) -> None:
    """Print ``error: message`` on stderr; with ``--debug``, when an exception is being handled, re-raise it
    instead, so that its traceback shows."""
    if _debug and sys.exc_info()[1] is not None:
        raise  # the exception being handled, with its own traceback
    typer.echo(f"error: {message}", err=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (with ``--debug``, see :func:`error`)."""
    error(message)
    raise typer.Exit(code)


def open_store(location: str, version: str | None = None):
    """The existing store at ``location`` (never created), read-only as of ``version`` (an id or a unique
    prefix) when given. A location that holds no store is exit code 2, an unknown version exit code 1."""
    import icechunk

    from maskbank.storage.arrays import error_reason
    from maskbank.storage.location import LocationError, parse_location
    from maskbank.storage.store import NotAStoreError, Store

    try:
        loc = parse_location(location)
        if loc.is_local and not loc.path.exists():
            fail(f"{loc.path}: not a maskbank store (no such directory)")
        store = Store.open(loc, create=False)
    except (LocationError, NotAStoreError) as e:
        fail(str(e))
    except icechunk.IcechunkError as e:
        fail(f"cannot open the store at {location}: {error_reason(e)}")
    if version is None:
        return store
    from maskbank.commands.lookup import NotInStoreError, resolve_version

    try:
        return store.at_version(resolve_version(store, version).id)
    except NotInStoreError as e:
        fail(str(e), 1)


def checked_location(location: str) -> str:
    """``location`` in canonical form (an absolute path for a local store); exit code 2 when it cannot be a
    store location at all."""
    from maskbank.storage.location import LocationError, parse_location

    try:
        return str(parse_location(location))
    except LocationError as e:
        fail(str(e))


