"""How large a collection the review page (``maskbank export --format html``) takes: the page's data per image,
the time to write it, and the time headless Chromium takes to open it at its first page.

    python bench/gallery.py --sizes 1000 10000 100000 300000 --out runs/gallery.json

Cards are synthetic but shaped like COCO's (80 classes; 1-6 image labels and 1-8 classes shown per image,
confidence and disagreement set), written as the export writes them (one card file per image); the page's
data is then written by the writer's own ``finish`` and opened in Chromium with the export's ``index.html``.
Opening time is Chromium's wall time less its time on the same page with no cards. Thumbnails are not
written: the page loads only the 48 of its first page, whatever the collection's size.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._common import format_table, provenance, publish  # noqa: E402
from maskbank.storage.datasets import VOC_CLASSES  # noqa: E402
from maskbank.storage.export import ExportOptions  # noqa: E402
from maskbank.storage.export.files import write_json  # noqa: E402
from maskbank.storage.export.gallery import CARDS_DIR, DATA, PAGE, GalleryWriter  # noqa: E402
from maskbank.storage.export.plan import ExportPlan  # noqa: E402
from maskbank.storage.export.source import ExportImage  # noqa: E402

CLASSES = ("background", *VOC_CLASSES, *(f"class{k}" for k in range(len(VOC_CLASSES) + 1, 81)))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--allow-file-access-from-files"]


def write_cards(folder: Path, n: int, rng: np.random.Generator) -> list[ExportImage]:
    """``n`` synthetic cards in ``folder``'s ``cards/``, as the export's ``add`` writes them."""
    images = []
    for i in range(n):
        name = f"{i:012d}"
        labels = sorted(int(k) for k in rng.choice(np.arange(1, 81), rng.integers(1, 7), replace=False))
        shown = rng.choice(np.arange(1, 81), rng.integers(1, 9), replace=False)
        shares = np.sort(rng.dirichlet(np.ones(len(shown) + 1))[:-1])[::-1]
        card = {"name": name, "id": name, "ext": ".jpg", "labels": [CLASSES[k] for k in labels],
                "classes": [[int(v), round(float(s), 4)] for v, s in zip(shown, shares)],
                "confidence": round(float(rng.random()), 4), "disagreement": round(float(rng.random()), 4),
                "truth": True, "size": [480, 640]}
        write_json(folder / CARDS_DIR / f"{name}.json", card)
        images.append(ExportImage(name, name, name, folder / f"{name}.jpg", False, folder, "bench", tuple(labels), True))
    return images


def open_seconds(page: Path, profile: Path) -> tuple[float, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("error: chromium is not installed (Debian: apt-get install chromium)")
    start = time.perf_counter()
    run = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri() + "#sort=confidence"],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return time.perf_counter() - start, run.stdout


def measure(n: int, work: Path, rng: np.random.Generator) -> dict:
    folder = work / f"g{n}"
    t0 = time.perf_counter()
    images = write_cards(folder, n, rng)
    cards_s = time.perf_counter() - t0
    plan = ExportPlan("bench", "bench", "pseudo_labels", folder, ExportOptions(format="html"), CLASSES, tuple(images))
    t0 = time.perf_counter()
    GalleryWriter(plan).finish(images)
    finish_s = time.perf_counter() - t0
    seconds, dom = open_seconds(folder / PAGE, work / "profile")
    shown = len(re.findall(r'<article class="card"', dom))
    ok = f"{n} of {n} images" in dom and shown == min(n, 48)
    shutil.rmtree(folder / CARDS_DIR, ignore_errors=True)
    return {"images": n, "data_bytes": (folder / DATA).stat().st_size, "write_cards_s": cards_s,
            "finish_s": finish_s, "open_s": seconds, "cards_shown": shown, "ok": ok}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    origin = provenance(__file__, argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="maskbank-gallery-") as tmp:
        work = Path(tmp)
        base = measure(0, work, rng)
        rows = [measure(n, work, rng) for n in args.sizes]
    for r in rows:
        r["open_less_empty_s"] = r["open_s"] - base["open_s"]
        r["bytes_per_image"] = (r["data_bytes"] - base["data_bytes"]) / r["images"]
    text = format_table(
        ["images", "gallery.js MB", "bytes/image", "finish s", "open s (less empty page)", "first page ok"],
        [[r["images"], f"{r['data_bytes'] / 1e6:.1f}", f"{r['bytes_per_image']:.0f}", f"{r['finish_s']:.1f}",
          f"{r['open_less_empty_s']:.2f}", r["ok"]] for r in rows])
    text += f"\n\nempty page: {base['open_s']:.2f} s"
    publish({"empty_page_s": base["open_s"], "rows": rows}, args.out, text, origin)
    if not all(r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
