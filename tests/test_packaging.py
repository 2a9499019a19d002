"""The wheel ships every package: each folder with an ``__init__.py`` is mapped in pyproject.toml."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {Path(v) for v in cfg["package-dir"].values()}
    assert set(cfg["packages"]) == set(cfg["package-dir"])
    folders = {
        p.parent.relative_to(ROOT)
        for top in ("maskbank", "flows", "tasks", "storage")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert folders == mapped
