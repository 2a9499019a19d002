"""The command line's help teaches a new user: ``--version``, ``--debug``, the commands in the order of use,
plain metavars (STORE, N, PATH, no Typer type names), the defaults of run's parameter options taken from the
run parameters' models, and an example on every command. None of it makes ``maskbank --help`` import the
flows' heavy modules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from maskbank import cli
from maskbank.commands.helptext import COMMAND_ORDER

WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
"""A terminal wide enough that no help line wraps."""

TYPER_METAVAR = re.compile(r"<(?:str|int|float|bool|path|text|file|dir|uuid|datetime|list\[[^\]]*\]|[\w ]+ range"
                           r"|[\w.]+(?:[,|][\w.]+)+)>(?:\.\.\.)?")
"""A value named by Typer's type names: ``<str>``, ``<list[str]>``, ``<str,str>...``, ``<a|b>``."""


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args), env=WIDE)


def _command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below ``command``, as the words that name it."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


ROOT = typer.main.get_command(cli.app)
PATHS = _command_paths(ROOT)


def _help(path: tuple[str, ...]) -> str:
    out = _invoke(*path, "--help")
    assert out.exit_code == 0, out.output
    return out.output


def test_version_prints_the_installed_version():
    out = _invoke("--version")
    assert out.exit_code == 0, out.output
    assert out.output == f"maskbank {metadata.version('maskbank')}\n"


def test_debug_reraises_what_an_error_line_reports():
    plain = _invoke("inspect", "ftp://bucket/store")
    assert plain.exit_code == 2 and plain.output.startswith("error: unknown store scheme 'ftp'"), plain.output
    assert plain.output.count("\n") == 1 and not isinstance(plain.exception, ValueError)
    debug = _invoke("--debug", "inspect", "ftp://bucket/store")
    assert debug.exit_code == 1 and type(debug.exception).__name__ == "LocationError", debug.output
    assert "unknown store scheme 'ftp'" in str(debug.exception) and "error: " not in debug.output
    again = _invoke("inspect", "ftp://bucket/store")  # --debug lasts one invocation
    assert again.exit_code == 2 and again.output == plain.output


def test_a_traceback_appears_only_with_debug():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "maskbank.cli", *args, "inspect", "ftp://bucket/store"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, **WIDE})

    plain, debug = run(), run("--debug")
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    assert plain.stderr.count("\n") == 1, plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "LocationError" in debug.stderr, debug.stderr
    assert not debug.stderr.startswith("error: ")


def test_commands_are_listed_in_the_order_of_use():
    assert ROOT.list_commands(typer.Context(ROOT)) == list(COMMAND_ORDER)
    listed = re.findall(r"^│ (\w+) {2,}\S", _help(()).split("Commands")[1], re.M)
    assert listed == list(COMMAND_ORDER)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "maskbank")
def test_help_names_values_plainly_and_ends_with_an_example(path):
    text = _help(path)
    assert not TYPER_METAVAR.search(text), TYPER_METAVAR.search(text)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "Example:" in text
    words = " ".join(("maskbank", *path))
    if path != ("versions", "list"):  # shown as its shorter form too
        assert re.search(rf"^\s+{re.escape(words)}\b", text.split("Example:")[1], re.M), text


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "maskbank")
def test_flags_take_no_metavar_and_values_a_plain_one(path):
    command = ROOT
    for word in path:
        command = command.commands[word]
    ctx = typer.Context(command)
    for param in command.get_params(ctx):
        shown = param.display_type_rich(ctx)
        if getattr(param, "is_flag", False):
            assert shown is None, param.name
        elif param.param_type_name == "option":
            assert shown and (shown == shown.upper() or shown.startswith("[")), (param.name, shown)


def test_compare_versions_takes_what_its_metavar_says():
    text = _help(("compare",))
    assert re.search(r"--versions\s+A B\s", text)
    command = ROOT.commands["compare"]
    (versions,) = [p for p in command.params if p.name == "versions"]
    assert versions.nargs == 2


def _option_help(text: str, option: str) -> str:
    """The rows of an option in a rendered help page, joined (a long default wraps onto a row of its own)."""
    rows, inside = [], False
    for line in text.splitlines():
        starts = re.match(r"^│\s+\*?\s*(--[\w-]+)", line)
        if starts:
            inside = starts.group(1) == option
        if inside:
            rows.append(line.strip("│ "))
    return " ".join(rows)


def test_run_shows_the_defaults_of_the_run_parameters():
    from maskbank.flows.execution import DEFAULT_WORKERS
    from maskbank.flows.params import RunParams

    p = RunParams()
    text = _help(("run",))
    for option, default in (("--points-per-side", p.propose.points_per_side), ("--input-size", p.propose.input_size),
                            ("--rule", p.retrieve.rule), ("--shard-size", p.shard_size), ("--workers", DEFAULT_WORKERS),
                            ("--k", f"{p.retrieve.k_per_class} per class with class_balanced, {p.retrieve.k} with "
                                    "majority or knn_weighted"), ("--batch", "1 on a CPU, 8 on CUDA")):
        assert f"[default: {default}]" in _option_help(text, option), (option, _option_help(text, option))
    assert "[default: 2]" in _option_help(_help(("demo",)), "--workers")


def test_main_help_imports_nothing_heavy():
    code = ("import sys\nfrom maskbank.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'maskbank.flows.params', 'prefect') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args", [["versions", "list", "{store}", "--kind", "foo"], ["versions", "{store}", "--kind", "foo"],
                                  ["versions", "--kind", "foo", "{store}"]])
def test_an_unknown_version_kind_is_a_one_line_error(tmp_path, args):
    out = _invoke(*[a.format(store=tmp_path / "store") for a in args])
    assert out.exit_code == 2
    assert out.output == "error: unknown version kind 'foo'; kinds are pseudo_labels, segmenter, bank, predictions, evaluation\n"


def test_module_constants_are_read_without_importing_the_module(tmp_path, monkeypatch):
    from maskbank.commands.helptext import module_constant

    (tmp_path / "heavy_defaults.py").write_text("import not_installed_anywhere\nN: int = 3\nKINDS = {'cpu': 1}\n"
                                                "COMPUTED = len('ab')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_constant("heavy_defaults", "N") == 3 and module_constant("heavy_defaults", "KINDS") == {"cpu": 1}
    assert "heavy_defaults" not in sys.modules
    with pytest.raises(ImportError):  # not a literal: imported, which here fails
        module_constant("heavy_defaults", "COMPUTED")
