"""Whole-pipeline throughput on real images: one worker, two local threads, and a local Dask cluster.

    python bench/throughput.py --out runs/throughput.json
    python bench/throughput.py --configs t1 t2 d2 t1 t2 --images 6 --out runs/throughput.json

The main flow runs on the bundled sample (``--images`` train2017 images as the labelled collection, 2
val2017 images as targets), default parameters but ``shard_size`` 2 (so that the per-image stages have
shards to run at once), device CPU, each configuration on a fresh store, after a one-image run that loads
the models where the shards run. Configurations: ``tN``: N threads of the flow's process (``workers=N``);
``dN``: a Dask scheduler and N single-threaded worker processes started on 127.0.0.1 (``dask=...``).
Every run of a configuration must publish the same version ids as the others (checked). Output: seconds,
images per hour and each stage's seconds per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
HOME = Path(tempfile.mkdtemp(prefix="maskbank-throughput-"))
os.environ.update(PREFECT_HOME=str(HOME), PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(HOME / "results"),
                  PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING", TQDM_DISABLE="1")

from bench._common import format_table, provenance, publish  # noqa: E402

SAMPLE = ROOT / "maskbank" / "sample" / "coco"
DASK = Path(sys.executable).with_name("dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int, logs: Path) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and ``workers`` one-thread worker processes with this run's Prefect API and result storage."""
    from prefect.settings import PREFECT_API_URL

    from maskbank.flows.execution import ClusterError, check_scheduler

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=logs)]
    for i in range(workers):
        procs.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--local-directory", str(logs / f"w{i}"), "--preload", "maskbank.flows.label"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=logs))
    deadline, joined = time.monotonic() + 120, 0
    while joined < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("the Dask workers did not join within 120 s")
        try:
            _, joined = check_scheduler(address, timeout=2)
        except ClusterError:
            pass
        time.sleep(0.5)
    return address, procs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["t1", "t2", "d2", "t1", "t2"])
    ap.add_argument("--images", type=int, default=6, help="Labelled train2017 images of the sample.")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    origin = provenance("bench/throughput.py", argv)

    from prefect.testing.utilities import prefect_test_harness

    from maskbank.flows.label import label_images
    from maskbank.flows.params import RunParams
    from maskbank.flows.stages.ingest import DatasetInput
    from maskbank.storage.datasets.coco import write_coco_subset

    work = Path(tempfile.mkdtemp(prefix="maskbank-throughput-data-"))
    train = write_coco_subset(SAMPLE, "train2017", work / "a", first=args.images, copy_images=True)
    val = write_coco_subset(SAMPLE, "val2017", work / "a", first=2, copy_images=True)
    warm = write_coco_subset(SAMPLE, "train2017", work / "w", first=1, copy_images=True)
    params = RunParams(shard_size=2)
    runs, clusters = [], {}

    def run(tag: str, labelled: Path, targets: Path | None, **execution):
        t0 = time.perf_counter()
        summary = label_images(datasets=[DatasetInput(path=str(labelled))], store=str(work / f"{tag}.store"),
                               targets=[DatasetInput(path=str(targets))] if targets else None, params=params,
                               device="cpu", **execution)
        return time.perf_counter() - t0, summary

    with prefect_test_harness(server_startup_timeout=120):
        try:
            for i, config in enumerate(args.configs):
                n = int(config[1:])
                if config[0] == "d":
                    if n not in clusters:
                        (work / f"dask{n}").mkdir()
                        clusters[n] = start_cluster(n, work / f"dask{n}")
                    execution = {"dask": clusters[n][0]}
                else:
                    execution = {"workers": n}
                run(f"warm{i}", warm, None, **execution)
                seconds, s = run(f"run{i}", train, val, **execution)
                images = args.images + 2
                runs.append({"config": config, "seconds": seconds, "images": images,
                             "images_per_hour": images * 3600 / seconds, "stages": s.seconds,
                             "ids": [s.pseudo_labels, s.bank, s.predictions]})
                print(json.dumps(runs[-1]), flush=True)
        finally:
            for _, procs in clusters.values():
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait()
    shutil.rmtree(work, ignore_errors=True)
    same = len({tuple(r["ids"]) for r in runs}) == 1
    rows = [[r["config"], f"{r['seconds']:.1f}", f"{r['images_per_hour']:.0f}",
             *(f"{r['stages'].get(s, 0):.1f}" for s in ("propose", "embed", "pool"))] for r in runs]
    text = format_table(["config", "seconds", "images/hour", "propose s", "embed s", "pool s"], rows)
    text += f"\n\nevery run published the same versions: {same}"
    publish({"runs": runs, "same_versions": same}, args.out, text, origin)
    if not same:
        sys.exit("runs published different versions")


if __name__ == "__main__":
    main()
