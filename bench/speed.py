"""Seconds per image and peak memory of each stage, mask generators side by side, and the flow's caching.

    python bench/speed.py --data ../shared/data/coco-tiny --images 5 --out runs/speed.json
    python bench/speed.py --input-size 1024 --threads 2 --out runs/speed1024.json
    python bench/speed.py --data maskbank/sample/coco --smoke --out /tmp/speed.json

proposals  Four mask generators on the same MobileSAM and images (the first ``--images`` of
           ``<data>/train2017`` by file name), all at the proposer's default settings otherwise:
             stock_fp32  Meta's ``SamAutomaticMaskGenerator`` as shipped (float32)
             stock       ``MaskProposer(generator="stock")``: Meta's generator under bf16 autocast
             fast_fp32   ``MaskProposer(generator="fast", bf16=False)``: the same masks as stock_fp32
             fast        ``MaskProposer()``: the default, fast generator in bf16
           Seconds per image (wall and CPU), masks per image, peak RSS, and the recall of each reference
           generator's masks (stock_fp32, stock) by every other one: the share of reference masks that a
           mask of the other matches with IoU >= 0.8, over all images.
features   The flow's feature extractor (``EmbedParams()``: DINOv2-S, 448 px, saliency head): seconds per
           image and peak RSS.
flow       ``label_images`` on the first ``--flow-images`` of the bundled sample's train2017: a cold run
           (models loaded, nothing cached), a fully cached rerun, and a run after one more image is added
           to the dataset; model caches are cleared before each run, as in a fresh process.

Proposals and features run once per ``--threads`` value, each generator or stage in a fresh process so
its peak RSS is its own (torch and the model included). Each measurement records ``other_load``, the mean
number of CPUs other processes kept busy meanwhile (Linux ``/proc/stat`` less this process's CPU time);
results where a model stage has it above 0.25 are marked ``under_load``, and their CPU seconds then say
more than the wall seconds (the flow's ``other_load`` counts its Prefect server process too). Images and
model settings are fixed, so reruns measure the same work. ``--smoke`` runs 2 images at 4x4 prompts,
224 px features, a 2 + 1 image flow and 1 thread, all measurements in one worker process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import format_table, provenance, publish  # noqa: E402

if TYPE_CHECKING:
    from maskbank.flows.params import RunParams

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/coco-tiny"
SAMPLE = ROOT / "maskbank/sample/coco"
GENERATORS = ("stock_fp32", "stock", "fast_fp32", "fast")
REFERENCES = ("stock_fp32", "stock")
MATCH_IOU = 0.8
UNDER_LOAD = 0.25  # CPUs kept busy by other processes, on average, above which a measurement is under load


@dataclass(frozen=True)
class Settings:
    """What is measured: images, light or default model settings, torch threads, process isolation."""

    images: int = 5
    input_size: int = 1024
    points_per_side: int = 16
    long_side: int = 448
    flow_images: int = 4
    threads: tuple[int, ...] = (1, 2)
    isolate: bool = True
    device: str = "cpu"

    @classmethod
    def smoke(cls, device: str = "cpu") -> Settings:
        return cls(images=2, input_size=512, points_per_side=4, long_side=224, flow_images=2, threads=(1,), isolate=False,
                   device=device)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _load() -> float:
    return os.getloadavg()[0]


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Mean number of CPUs that other processes kept busy between :meth:`start` and :meth:`stop`."""

    def start(self) -> None:
        self._busy, self._own, self._wall = _busy_cpu_seconds(), time.process_time(), time.perf_counter()

    def stop(self) -> float | None:
        busy = _busy_cpu_seconds()
        if busy is None or self._busy is None:
            return None
        others = (busy - self._busy) - (time.process_time() - self._own)
        return max(others, 0.0) / max(time.perf_counter() - self._wall, 1e-9)


def _features(settings: Settings):
    """The flow's feature extractor at ``settings``: ``uint8[H, W, 3] -> dict``."""
    from maskbank.flows import runtime
    from maskbank.flows.params import EmbedParams

    extractor = runtime.extractor(EmbedParams(long_side=settings.long_side), settings.device)
    return lambda image: {"grid": list(extractor(image).features.shape)}


def _proposer(generator: str, settings: Settings):
    """The mask generator named ``generator`` (see the module docstring): ``uint8[H, W, 3] -> dict``."""
    from segment_anything import SamAutomaticMaskGenerator

    from maskbank.storage.weights import fetch
    from maskbank.tasks.models.device import resolve_device
    from maskbank.tasks.models.sam import build_sam
    from maskbank.tasks.propose import MaskProposer, ProposerConfig

    base = ProposerConfig(input_size=settings.input_size, points_per_side=settings.points_per_side,
                          device=settings.device)
    sam = build_sam("vit_t", fetch("mobile_sam"), image_size=base.input_size)
    if generator == "stock_fp32":
        meta = SamAutomaticMaskGenerator(
            sam.to(resolve_device(settings.device)),
            points_per_side=base.points_per_side,
            points_per_batch=base.prompts_per_batch(resolve_device(settings.device)),
            pred_iou_thresh=base.pred_iou_thresh, stability_score_thresh=base.stability_score_thresh,
            box_nms_thresh=base.box_nms_thresh, output_mode="coco_rle",
        )

        def propose(image):
            rles = [r["segmentation"] for r in meta.generate(image)]
            return {"masks": len(rles), "rles": rles}

        return propose
    config = {
        "stock": replace(base, generator="stock"),
        "fast_fp32": replace(base, generator="fast", bf16=False),
        "fast": base,
    }[generator]
    proposer = MaskProposer(sam, config)

    def propose(image):
        props = proposer(image)
        return {"masks": len(props), "rles": props.rles}

    return propose


def measure(jobs: list[dict], paths: list[str], settings: Settings) -> list[dict]:
    """Time each job on every image in this process (the worker of :func:`run_jobs`)."""
    import cv2
    import torch

    results = []
    for job in jobs:
        torch.set_num_threads(job["threads"])
        load_before, rss_before = _load(), _peak_rss_mib()
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = _features(settings) if job["stage"] == "features" else _proposer(job["generator"], settings)
        load_seconds = time.perf_counter() - t0
        per_image = []
        other = OtherLoad()
        other.start()
        for path in paths:
            image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            wall, cpu = time.perf_counter(), time.process_time()
            out = model(image)
            per_image.append({"image": Path(path).name, "hw": list(image.shape[:2]),
                              "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, **out})
        results.append({
            **job,
            "model_load_seconds": load_seconds,
            "seconds_per_image": float(np.mean([r["seconds"] for r in per_image])),
            "cpu_seconds_per_image": float(np.mean([r["cpu_seconds"] for r in per_image])),
            "peak_rss_mib": _peak_rss_mib(),
            "peak_rss_before_model_mib": rss_before,
            "isolated": settings.isolate,
            "loadavg_1min": [load_before, _load()],
            "other_load": other.stop(),
            "per_image": per_image,
        })
    return results


def run_jobs(jobs: list[dict], paths: list[str], settings: Settings) -> list[dict]:
    """Run ``jobs`` in fresh processes: one each when ``settings.isolate``, else all in one."""
    groups = [[job] for job in jobs] if settings.isolate else [jobs]
    results = []
    for group in groups:
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            results.extend(pool.submit(measure, group, paths, settings).result())
    return results


def recall(reference: list[list[dict]], candidate: list[list[dict]], threshold: float = MATCH_IOU) -> dict:
    """Share of ``reference`` masks (RLEs per image) matched by a ``candidate`` mask with IoU >= threshold."""
    from pycocotools import mask as mask_utils

    matched = []
    for ref, cand in zip(reference, candidate, strict=True):
        if ref and cand:
            iou = np.asarray(mask_utils.iou(ref, cand, [0] * len(cand))).reshape(len(ref), len(cand))
            matched.append(int((iou.max(axis=1) >= threshold).sum()))
        else:
            matched.append(0)
    total = sum(len(r) for r in reference)
    return {"recall": sum(matched) / total if total else None, "matched": sum(matched), "reference_masks": total,
            "per_image": [m / len(r) if r else None for m, r in zip(matched, reference)]}


def proposal_summary(results: list[dict]) -> dict:
    """Per thread count: each generator's figures, speed-ups and recall against the references."""
    summary = {}
    for threads in sorted({r["threads"] for r in results}):
        runs = {r["generator"]: r for r in results if r["threads"] == threads}
        rles = {name: [im.pop("rles") for im in run["per_image"]] for name, run in runs.items()}
        for name, run in runs.items():
            run["masks_per_image"] = float(np.mean([im["masks"] for im in run["per_image"]]))
            for ref in REFERENCES:
                if ref in runs and ref != name:
                    run[f"recall_of_{ref}"] = recall(rles[ref], rles[name])
                    run[f"speedup_vs_{ref}"] = runs[ref]["seconds_per_image"] / run["seconds_per_image"]
                    run[f"cpu_speedup_vs_{ref}"] = runs[ref]["cpu_seconds_per_image"] / run["cpu_seconds_per_image"]
        summary[str(threads)] = runs
    return summary


def measure_flow(count: int, params: RunParams, device: str) -> dict:
    """Cold run, fully cached rerun and one-image-added run of ``label_images`` on the sample's train2017."""
    import torch
    from prefect import flow

    from maskbank.flows import runtime
    from maskbank.flows.label import label_images
    from maskbank.flows.stages.ingest import DatasetInput
    from maskbank.storage.datasets.coco import write_coco_subset

    @flow
    def warm_up() -> None:
        """Start the Prefect API (a temporary server when none is configured) before timing."""

    t0 = time.perf_counter()
    warm_up()
    runs = {"prefect_start_seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="maskbank-speed-") as tmp:
        store = str(Path(tmp) / "speed-store")
        for name, images in (("cold", count), ("cached_rerun", count), ("add_one_image", count + 1)):
            dataset = DatasetInput(path=str(write_coco_subset(SAMPLE, "train2017", Path(tmp), first=images)),
                                   images=str(SAMPLE / "train2017"))
            runtime.proposer.cache_clear()
            runtime.extractor.cache_clear()
            load, other = _load(), OtherLoad()
            other.start()
            t0 = time.perf_counter()
            summary = label_images(datasets=[dataset], store=store, params=params, device=device)
            runs[name] = {"seconds": time.perf_counter() - t0, "images": images, "computed": summary.computed,
                          "stage_seconds": summary.seconds, "loadavg_1min": [load, _load()],
                          "other_load": other.stop()}
    return runs


def run(data: Path, settings: Settings, log=print) -> dict:
    """Every measurement of the module docstring; returns the results."""
    import torch

    from maskbank.flows.params import EmbedParams, ProposeParams, RunParams

    paths = [str(p) for p in sorted((data / "train2017").glob("*.jpg"))[: settings.images]]
    if len(paths) < settings.images:
        raise SystemExit(f"{data / 'train2017'} has {len(paths)} .jpg images, fewer than {settings.images}")
    results = {
        "settings": asdict(settings),
        "images": [Path(p).name for p in paths],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "loadavg_1min_start": _load()},
    }
    jobs = [{"stage": "proposals", "generator": g, "threads": t} for t in settings.threads for g in GENERATORS]
    jobs += [{"stage": "features", "threads": t} for t in settings.threads]
    log(f"measuring {len(jobs)} jobs on {len(paths)} images ...")
    measured = run_jobs(jobs, paths, settings)
    results["proposals"] = proposal_summary([r for r in measured if r["stage"] == "proposals"])
    results["features"] = {str(r["threads"]): r for r in measured if r["stage"] == "features"}
    propose = ProposeParams(input_size=settings.input_size, points_per_side=settings.points_per_side)
    params = RunParams(propose=propose, embed=EmbedParams(long_side=settings.long_side))
    log("timing the flow ...")
    results["flow"] = measure_flow(settings.flow_images, params, settings.device)
    results["machine"]["loadavg_1min_end"] = _load()
    # the flow's other_load includes its Prefect server process, so only the model stages decide
    results["under_load"] = any(r["other_load"] is not None and r["other_load"] > UNDER_LOAD for r in measured)
    return results


def report(results: dict) -> str:
    """The results as text tables."""
    lines = [f"images: {', '.join(results['images'])}"]
    if results["under_load"]:
        lines.append("measured under load: other processes kept CPUs busy (see other_load); compare CPU seconds")
    rows = []
    for threads, runs in results["proposals"].items():
        for name, r in runs.items():
            recalls = [(r.get(f"recall_of_{ref}") or {}).get("recall") for ref in REFERENCES]
            rows.append([name, threads, r["seconds_per_image"], r["cpu_seconds_per_image"], r["masks_per_image"],
                         round(r["peak_rss_mib"]), r.get("cpu_speedup_vs_stock_fp32"), r.get("cpu_speedup_vs_stock"),
                         *recalls, r["other_load"]])
    lines += ["", format_table(["generator", "threads", "s/image", "CPU s/image", "masks/image", "peak RSS MiB",
                                "CPU speed-up vs stock_fp32", "vs stock", "recall of stock_fp32", "of stock",
                                "other load"], rows)]
    rows = [[t, r["seconds_per_image"], r["cpu_seconds_per_image"], round(r["peak_rss_mib"]), r["other_load"]]
            for t, r in results["features"].items()]
    lines += ["", format_table(["features threads", "s/image", "CPU s/image", "peak RSS MiB", "other load"], rows)]
    flow = results["flow"]
    rows = [[name, flow[name]["images"], flow[name]["seconds"], json.dumps(flow[name]["computed"])]
            for name in ("cold", "cached_rerun", "add_one_image")]
    lines += ["", format_table(["flow run", "images", "seconds", "computed"], rows),
              f"(flow with {flow['torch_threads']} torch threads; Prefect API start before timing: "
              f"{flow['prefect_start_seconds']:.1f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO root whose train2017 images are timed")
    parser.add_argument("--images", type=int, default=Settings.images, help="first N images of train2017 by name")
    parser.add_argument("--input-size", type=int, default=Settings.input_size,
                        help="SAM encoder input side (1024 default, native; 512 about 4x faster)")
    parser.add_argument("--flow-images", type=int, default=Settings.flow_images,
                        help="images of the sample's train2017 in the cold flow run (one more is added)")
    parser.add_argument("--threads", type=int, nargs="+", default=list(Settings.threads), help="torch thread counts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=Path("runs/speed.json"), help="results JSON")
    parser.add_argument("--smoke", action="store_true", help="2 images at light settings (for the test suite)")
    args = parser.parse_args(argv)
    origin = provenance(__file__, argv)

    if args.smoke:
        settings = Settings.smoke(args.device)
    else:
        settings = Settings(images=args.images, input_size=args.input_size, flow_images=args.flow_images,
                            threads=tuple(args.threads), device=args.device)
    results = run(args.data, settings)
    results["smoke"] = args.smoke
    publish(results, args.out, report(results), origin)
    return results


if __name__ == "__main__":
    main()
