"""The commands the documentation gives (README.md and docs/*.md), for tests that run them as written.

A command is a line of a ```bash block (``\\`` continuations joined, comments dropped, ``&&`` chains split)
or a ``$ `` line of another block that is not Python. Tests take a command with ``documented(text)``,
which fails unless the documentation has exactly that command, so a test runs what the reader reads;
``test_every_documented_command_is_run_by_a_test`` checks that every command has such a test.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Command:
    text: str  # words requoted as the shell needs them, comments dropped
    line: str  # as written (continuations joined)
    source: str  # file:line


def _logical_lines(block: str) -> list[tuple[int, str]]:
    """Lines of a block with ``\\`` continuations joined, with the offset of each one's first line."""
    out, pending, start = [], "", 0
    for i, line in enumerate(block.splitlines()):
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _normalise(line: str) -> str:
    return shlex.join(shlex.split(line, comments=True))


def commands_in(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        lang, block = m.group(1), m.group(2)
        if lang == "python":
            continue
        first = text.count("\n", 0, m.start(2)) + 1
        for offset, line in _logical_lines(block):
            if lang != "bash":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            for part in re.split(r"\s&&\s", line):
                if shlex.split(part, comments=True):
                    found.append(Command(_normalise(part), part.strip(), f"{path.relative_to(ROOT)}:{first + offset}"))
    return found


def all_commands() -> list[Command]:
    return [c for path in documents() for c in commands_in(path)]


def documented(text: str, replace: dict[str, str] | None = None) -> list[str]:
    """The argv of the documented command ``text`` (as the documentation writes it; comments and quoting that
    does not change the words do not matter), with the placeholders or paths in ``replace`` substituted."""
    wanted = _normalise(text)
    matches = [c for c in all_commands() if c.text == wanted]
    assert matches, f"the documentation has no command {wanted!r}"
    line = matches[0].line
    for old, new in (replace or {}).items():
        assert old in line, f"{old!r} is not in {line!r}"
        line = line.replace(old, shlex.quote(new))
    return shlex.split(line, comments=True)


def _jpeg(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), colour, np.uint8)).save(path)


def build_layouts(data: Path, sample: Path) -> dict[str, int]:
    """Each layout of README's "Your data" under ``data``, at the paths it names (COCO with a val2017 split too, for
    the README's run); returns the labelled images per layout."""
    from maskbank.storage.datasets.coco import write_coco_subset
    from maskbank.tasks.render import label_palette

    write_coco_subset(sample, "train2017", data / "coco", first=2, copy_images=True)
    write_coco_subset(sample, "val2017", data / "coco", first=1, copy_images=True)

    voc = data / "voc"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    for stem, colour in (("a", (200, 30, 30)), ("b", (30, 200, 30))):
        _jpeg(voc / "JPEGImages" / f"{stem}.jpg", colour)
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 4:20] = 15  # person
        png = Image.fromarray(mask, mode="P")
        png.putpalette(label_palette(256).ravel().tolist())
        (voc / "SegmentationClass").mkdir(exist_ok=True)
        png.save(voc / "SegmentationClass" / f"{stem}.png")

    photos = data / "photos"
    for name, colour in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 30, 200))):
        _jpeg(photos / name, colour)
    (photos / "labels.csv").write_text("image,labels\na.jpg,dog;person\nb.jpg,dog\n")

    scenes = data / "scenes"
    (scenes / "classes.txt").parent.mkdir(parents=True)
    (scenes / "classes.txt").write_text("sky\ngrass\n")
    for stem in ("s0", "s1"):
        _jpeg(scenes / "images" / f"{stem}.jpg", (90, 150, 230))
        mask = np.zeros((24, 32), np.uint8)
        mask[12:] = 1
        (scenes / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask, mode="L").save(scenes / "masks" / f"{stem}.png")
    return {"coco": 2, "voc": 2, "photos": 2, "scenes": 2}
