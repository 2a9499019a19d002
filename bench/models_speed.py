"""Seconds per image and peak memory of the mask proposer and the feature extractor.

Each setting runs in its own process, so its peak RSS is its own (model load included).

    python bench/models_speed.py --images 5 --out runs/models_speed.json
    python bench/models_speed.py --settings sam512 embed448 --images 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/coco-tiny/train2017"

SETTINGS: dict[str, dict] = {
    "sam512": {"kind": "proposer", "input_size": 512},
    "sam1024": {"kind": "proposer", "input_size": 1024},
    "embed448": {"kind": "embed", "long_side": 448},
    "embed448_bf16": {"kind": "embed", "long_side": 448, "bf16": True},
}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float32), b.reshape(-1, b.shape[-1]).astype(np.float32)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run(name: str, paths: list[str], points_per_side: int, bf16: bool, threads: int | None) -> dict:
    from maskbank.storage.weights import fetch

    if threads:
        torch.set_num_threads(threads)
    setting = SETTINGS[name]
    t0 = time.perf_counter()
    if setting["kind"] == "proposer":
        from maskbank.tasks.propose import MaskProposer, ProposerConfig

        config = ProposerConfig(input_size=setting["input_size"], points_per_side=points_per_side, bf16=bf16)
        model = MaskProposer.from_checkpoint(fetch("mobile_sam"), config)

        def describe(proposals, image):
            return {"masks": len(proposals)}
    else:
        from maskbank.tasks.embed import EmbedConfig, FeatureExtractor
        from maskbank.tasks.models.backbone import load_backbone

        config = EmbedConfig(long_side=setting["long_side"], bf16=setting.get("bf16", False))
        backbone = load_backbone(fetch("dinov2_s"))
        model = FeatureExtractor(backbone, config)
        # bf16 runs also report the per-token cosine to the float32 features (computed untimed)
        reference = FeatureExtractor(backbone, EmbedConfig(long_side=config.long_side)) if config.bf16 else None

        def describe(grid, image):
            info = {"grid": list(grid.features.shape)}
            if reference is not None:
                cos = _cosine(grid.features, reference(image).features)
                info["cosine_to_fp32_min"], info["cosine_to_fp32_mean"] = float(cos.min()), float(cos.mean())
            return info

    load_s = time.perf_counter() - t0
    rss_after_load = _peak_rss_mib()
    per_image = []
    for p in paths:
        image = _read(Path(p))
        t = time.perf_counter()
        out = model(image)
        per_image.append({"image": Path(p).name, "hw": list(image.shape[:2]), "seconds": time.perf_counter() - t,
                          **describe(out, image)})
    seconds = [r["seconds"] for r in per_image]
    return {
        "setting": name,
        "torch_threads": torch.get_num_threads(),
        "config": vars(config),
        "load_seconds": load_s,
        "peak_rss_mib_after_load": rss_after_load,
        "peak_rss_mib": _peak_rss_mib(),
        "seconds_per_image_mean": float(np.mean(seconds)),
        "seconds_per_image_median": float(np.median(seconds)),
        "per_image": per_image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--images", type=int, default=5, help="first N images (sorted by name) of --image-dir")
    parser.add_argument("--image-dir", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--fp32", action="store_true", help="proposer without bf16 autocast")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    paths = [str(p) for p in sorted(args.image_dir.glob("*.jpg"))[: args.images]]
    if not paths:
        raise SystemExit(f"no .jpg images in {args.image_dir}")
    ctx = mp.get_context("spawn")
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "loadavg_start": os.getloadavg(),
        },
        "runs": [],
    }
    for name in args.settings:
        with ctx.Pool(1) as pool:  # a fresh process per setting: its own peak RSS
            result = pool.apply(_run, (name, paths, args.points_per_side, not args.fp32, args.threads))
        results["runs"].append(result)
        print(
            f"{name} ({result['torch_threads']} threads): {result['seconds_per_image_mean']:.2f} s/image "
            f"(median {result['seconds_per_image_median']:.2f}), peak RSS {result['peak_rss_mib']:.0f} MiB, "
            f"model load {result['load_seconds']:.1f} s",
            flush=True,
        )
    results["machine"]["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
