"""README's "Your data": each layout it describes, built at the paths it names, read by the ``maskbank check``
command it gives, as written."""

from __future__ import annotations

from typer.testing import CliRunner

from doc_commands import build_layouts, documented

CHECKS = {
    "coco": "maskbank check data/coco --split train2017",
    "voc": "maskbank check data/voc --split train",
    "photos": "maskbank check data/photos/labels.csv",
    "scenes": "maskbank check data/scenes",
}


def test_readme_layouts_read_as_written(tmp_path, monkeypatch, sample_root):
    from maskbank.cli import app

    images = build_layouts(tmp_path / "data", sample_root)
    monkeypatch.chdir(tmp_path)
    for layout, command in CHECKS.items():
        out = CliRunner().invoke(app, [*documented(command)[1:], "--device", "cpu"])
        assert out.exit_code == 0, (command, out.output)
        n = images[layout]
        assert f"{n} images, {n} labelled" in out.output, (command, out.output)
        assert "still to compute: proposals" in out.output
