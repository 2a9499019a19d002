"""How the command line's help pages read.

Typer names each value by its Python type (``<str>``, ``<list[str]>``, ``<bool>`` even on flags); here a
value is named by what it is: an explicit metavar (``STORE``, ``VERSION``, ``OLD=NEW``), else ``N`` for a
whole number, ``NUMBER``, ``PATH``, ``TEXT`` or the choices (``[a|b|c]``); flags take none. Arguments appear
in the usage line as ``STORE``, ``[VERSION]``, ``DATASET...``. A default that is defined elsewhere (the run
parameters' models) is computed only when a help page is rendered, so that starting the command line
imports nothing heavy (see :func:`lazy_defaults` and :func:`module_constant`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

COMMAND_ORDER = ("run", "demo", "check", "params", "export", "evaluate", "versions", "inspect", "show",
                 "compare", "server", "weights")
"""maskbank's commands in the order a new user meets them: label, look before and after, use the labels,
look inside the store, then the machinery."""


def _element_type(annotation: Any) -> Any:
    """The type of one value of an option (the element type of a repeatable one)."""
    if get_origin(annotation) in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return args[0] if args else str
    return annotation


def plain_metavar(param: TyperOption | TyperArgument) -> str:
    """The name of a parameter's value when it sets none: its choices, or N, NUMBER, PATH or TEXT."""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return "TEXT"
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    kind = _element_type(desc.annotation)
    if kind is int:
        return "N"
    if kind is float:
        return "NUMBER"
    return "TEXT"


class PlainOption(TyperOption):
    """An option whose value is named plainly; a flag names none. A default given as text
    (``show_default="..."``) is shown as it is, not in parentheses."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar if self.metavar is not None else plain_metavar(self)

    def _get_default_string(self, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
        if show_default_is_str:
            return str(self.show_default)
        return super()._get_default_string(ctx=ctx, show_default_is_str=show_default_is_str,
                                           default_value=default_value)


class PlainArgument(TyperArgument):
    """An argument named by its metavar alone (no type beside it), written in the usage line as
    ``NAME``, ``[NAME]`` when optional, ``NAME...`` when it takes several."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _get_default_string(self, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
        if show_default_is_str:
            return str(self.show_default)
        return super()._get_default_string(ctx=ctx, show_default_is_str=show_default_is_str,
                                           default_value=default_value)

    def _usage_display_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"


_PLAIN = {TyperOption: PlainOption, TyperArgument: PlainArgument}


def plain_params(params: Sequence[Any]) -> list[Any]:
    """``params`` with each of Typer's options and arguments made a plain one: the same objects, their class
    changed to the subclass that only renders them differently (Typer builds them, so they cannot be
    built as plain ones)."""
    for p in params:
        plain = _PLAIN.get(type(p))
        if plain is not None:
            p.__class__ = plain
    return list(params)


class PlainCommand(TyperCommand):
    """A command whose help names values plainly (see the module)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_params(super().get_params(ctx))


class PlainGroup(TyperGroup):
    """A group of commands whose own help names values plainly (give its commands ``cls=PlainCommand``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_params(super().get_params(ctx))


class MaskbankGroup(PlainGroup):
    """The ``maskbank`` group: its commands listed in :data:`COMMAND_ORDER`, any other after them."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


def module_constant(module: str, name: str) -> Any:
    """The value of the constant ``name`` of ``module``: read from its source when it is a literal, so that
    a help page need not import the module (and Prefect or torch with it); imported otherwise."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        for node in ast.parse(Path(spec.origin).read_text()).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if value is not None and any(isinstance(t, ast.Name) and t.id == name for t in targets):
                try:
                    return ast.literal_eval(value)
                except ValueError:  # computed: import it
                    break
    return getattr(importlib.import_module(module), name)


def lazy_defaults(compute: Callable[[], Mapping[str, str]]) -> type[PlainCommand]:
    """A command class whose help shows ``compute()[name]`` as the default of the parameter ``name``;
    ``compute`` runs only when the help page is rendered, so it may import what the command itself imports
    only when it runs."""

    class Command(PlainCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            shown = compute()
            for p in self.get_params(ctx):
                if p.name in shown:
                    p.show_default = shown[p.name]
            super().format_help(ctx, formatter)

    return Command
