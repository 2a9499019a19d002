"""How long the command line takes to answer before any work: help pages and a usage error, each a fresh
process, as a user meets them.

    python bench/startup.py --repeat 7 --out bench/results/startup.json

Each command runs ``--repeat`` times, interleaved, so that a busy moment of the machine falls on all of them;
the table gives the median and the range of the wall-clock seconds, and the modules that take longest to
import on the slowest path (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench._common import format_table, provenance, publish  # noqa: E402

COMMANDS = {
    "maskbank --help": ["--help"],
    "maskbank --version": ["--version"],
    "maskbank run --help": ["run", "--help"],
    "maskbank check --help": ["check", "--help"],
    "maskbank run --labelled /nonexistent (usage error)": ["run", "--store", "unused-store", "--labelled",
                                                           "/nonexistent"],
}


def _maskbank() -> list[str]:
    exe = shutil.which("maskbank") or str(Path(sys.executable).with_name("maskbank"))
    return [exe]


def _seconds(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - t0


def _slowest_imports(argv: list[str], top: int = 6) -> list[tuple[str, float]]:
    """The packages other than maskbank with the largest cumulative import time on ``argv``'s path (a package's
    first import, with everything it imports)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import sys; from maskbank.cli import app; sys.argv = ['maskbank', *sys.argv[1:]]; app()",
                           *argv], capture_output=True, text=True)
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)", line)
        if m and m.group(2).split(".")[0] != "maskbank":
            name = m.group(2).split(".")[0]
            totals[name] = max(totals.get(name, 0.0), int(m.group(1)) / 1e6)
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    args = parser.parse_args(argv)
    origin = provenance(__file__, argv)
    exe = _maskbank()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            times[name].append(_seconds([*exe, *cmd]))
    rows = [[name, f"{statistics.median(t):.2f}", f"{min(t):.2f}-{max(t):.2f}"] for name, t in times.items()]
    imports = _slowest_imports(COMMANDS["maskbank run --help"])
    text = "\n\n".join([
        format_table(["command", "median s", "range s"], rows),
        "slowest imports of `maskbank run --help` (cumulative s): "
        + ", ".join(f"{name} {s:.2f}" for name, s in imports),
    ])
    publish({"seconds": times, "imports": imports, "repeat": args.repeat}, args.out, text, origin)


if __name__ == "__main__":
    main()
