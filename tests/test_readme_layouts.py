"""README's "Your data": each layout it describes, built at the paths it names, read by the ``maskbank check``
command it gives, as written (the commands are taken from the README itself)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_commands(title: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"## {title}\n"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("maskbank ")]


def _jpeg(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), colour, np.uint8)).save(path)


def _layouts(data: Path, sample: Path) -> dict[str, int]:
    """Each layout under ``data`` as the README draws it; returns images per layout."""
    from maskbank.storage.datasets.coco import write_coco_subset
    from maskbank.tasks.render import label_palette

    write_coco_subset(sample, "train2017", data / "coco", first=2, copy_images=True)

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


def test_readme_layouts_read_as_written(tmp_path, monkeypatch, sample_root):
    from maskbank.cli import app

    commands = _section_commands("Your data")
    assert len(commands) == 4
    images = _layouts(tmp_path / "data", sample_root)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = shlex.split(command)[1:]
        layout = Path(args[1]).parts[1]
        out = CliRunner().invoke(app, [*args, "--device", "cpu"])
        assert out.exit_code == 0, (command, out.output)
        n = images[layout]
        assert f"{n} images, {n} labelled" in out.output, (command, out.output)
        assert "still to compute: proposals" in out.output
