"""What the store costs: objects and bytes per image per stage, feature throughput on a local path and on an
S3 server, and opening a large collection's features lazily.

    python bench/storage.py --out runs/storage.json
    python bench/storage.py --smoke --out /tmp/storage.json
    python bench/storage.py --count-layout OLD_STORE --out runs/storage-old.json   # a format-1 folder store

objects    ``label_images`` on the bundled sample (12 labelled + 6 target images; ``--flow-images`` of the
           labelled ones) into a fresh local store, with every commit recorded: the files each commit
           added to the repository are charged to the stage that wrote them (proposals, features, pooled,
           labels, versions, datasets), giving objects and bytes per image per stage.
throughput ``--images`` synthetic feature grids (32 x 32 x 384, float16, as DINOv2-S at 448 px) written
           ``--batch`` images per commit, then read back one image at a time, on a local path and on a
           SeaweedFS S3 server started on 127.0.0.1 (when the ``weed`` binary is installed).
open       a synthetic ``--open-images`` collection's features (32 x 32 x 8 per image, one image per chunk,
           written 1,000 per commit): seconds for ``xr.open_zarr`` on the group and for reading one image.

``--count-layout`` counts the files and bytes of a folder store of the earlier per-item layout by stage
(its top-level folders), for the comparison in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repository root
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench._common import format_table, provenance, publish  # noqa: E402

SAMPLE = ROOT / "maskbank" / "sample" / "coco"
GRID, CHANNELS = (32, 32), 384


def _files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def _stage_of(message: str) -> str:
    """The stage a commit message names (see ``Store.write_images`` and ``publish_version``)."""
    head = message.split(" ", 1)[0]
    if head == "publish":
        return "versions"
    if head == "dataset":
        return "datasets"
    return head


def count_objects(flow_images: int, light: bool, log=print) -> dict:
    """Objects and bytes each stage adds to a local repository in one run of the flow."""
    from maskbank.flows.label import label_images
    from maskbank.flows.params import EmbedParams, ProposeParams, RunParams
    from maskbank.flows.stages.ingest import DatasetInput
    from maskbank.storage import repository
    from maskbank.storage.datasets.coco import write_coco_subset

    params = RunParams()
    if light:
        params = RunParams(propose=ProposeParams(points_per_side=4, input_size=512), embed=EmbedParams(long_side=224))
    charged: dict[str, dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0, "commits": 0})
    with tempfile.TemporaryDirectory(prefix="maskbank-storage-") as tmp:
        store = Path(tmp) / "store"
        original = repository.transact

        def recording(repo, location, write, message, metadata=None):
            before = _files(store) if store.exists() else {}
            out = original(repo, location, write, message, metadata)
            if out[1] is not None:
                after = _files(store)
                new = {k: v for k, v in after.items() if k not in before and not k.startswith("maskbank-locks")}
                c = charged[_stage_of(message)]
                c["objects"] += len(new)
                c["bytes"] += sum(new.values())
                c["commits"] += 1
            return out

        repository.transact = recording
        import maskbank.storage.store as store_module

        store_module.transact = recording
        try:
            train = write_coco_subset(SAMPLE, "train2017", Path(tmp) / "coco", first=flow_images)
            val = write_coco_subset(SAMPLE, "val2017", Path(tmp) / "coco", first=len(list((SAMPLE / "val2017").glob("*.jpg"))))
            t0 = time.perf_counter()
            summary = label_images(datasets=[DatasetInput(path=str(train), images=str(SAMPLE / "train2017"))],
                                   targets=[DatasetInput(path=str(val), images=str(SAMPLE / "val2017"))],
                                   store=str(store), params=params, device="cpu")
            seconds = time.perf_counter() - t0
        finally:
            repository.transact = original
            store_module.transact = original
        total = _files(store)
    images = summary.images["distinct"]
    per_stage = {k: {**v, "objects_per_image": v["objects"] / images, "bytes_per_image": v["bytes"] / images}
                 for k, v in sorted(charged.items())}
    log(f"flow on {images} images in {seconds:.0f} s: {len(total)} files, {sum(total.values()) / 1e6:.1f} MB")
    return {"images": images, "labelled": summary.images["labelled"], "light": light, "seconds": seconds,
            "files": len(total), "bytes": sum(total.values()), "per_stage": per_stage}


def count_layout(path: Path) -> dict:
    """Files and bytes per top-level folder (stage) of a folder store of the per-item layout."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0})
    for rel, size in _files(path).items():
        stage = rel.split("/", 1)[0] if "/" in rel else "root"
        per[stage]["objects"] += 1
        per[stage]["bytes"] += size
    return {"files": sum(v["objects"] for v in per.values()), "bytes": sum(v["bytes"] for v in per.values()),
            "per_stage": dict(sorted(per.items()))}


def _features(n: int, channels: int, seed: int):
    from maskbank.storage.store import Store
    from maskbank.tasks.geometry import PatchGeometry

    geometry = PatchGeometry((448, 448), (448, 448), 14, GRID)
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((*GRID, channels)).astype(np.float16)
    return [Store.features_output(f"img{seed}-{i:07d}", np.roll(block, i, axis=2), geometry) for i in range(n)]


def throughput(location: str, images: int, batch: int) -> dict:
    """MB/s writing ``images`` feature grids ``batch`` per commit, and reading them back one at a time."""
    from maskbank.storage.store import Store

    st = Store.open(location)
    outputs = _features(images, CHANNELS, seed=1)
    mb = sum(o.arrays["features"].nbytes for o in outputs) / 1e6
    t0 = time.perf_counter()
    for i in range(0, images, batch):
        st.write_features("bench", outputs[i : i + batch])
    write = time.perf_counter() - t0
    reader = Store.open(location, create=False)
    t0 = time.perf_counter()
    for o in outputs:
        reader.read_features("bench", o.key, verify=False)
    read = time.perf_counter() - t0
    return {"images": images, "batch": batch, "megabytes": mb, "write_seconds": write, "read_seconds": read,
            "write_mb_per_s": mb / write, "read_mb_per_s": mb / read}


def chunking(directory: Path, images: int, batch: int, shard: int) -> dict:
    """One image per chunk (the store's layout) against Zarr sharding (``shard`` images per object, one image
    per inner chunk), for a features array appended ``batch`` images per commit on a local repository:
    objects and bytes the repository holds afterwards, and write seconds. Sharding rewrites a partly
    filled shard on every append, so its writes grow with ``shard / batch``."""
    import icechunk
    import zarr

    from maskbank.storage.repository import repository_config

    shape = (*GRID, CHANNELS)
    rng = np.random.default_rng(3)
    block = rng.standard_normal((batch, *shape)).astype(np.float16)
    out = {}
    for name, shards in (("chunk_per_image", None), (f"shard_of_{shard}", (shard, *shape))):
        path = directory / name
        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)), config=repository_config())
        s = repo.writable_session("main")
        g = zarr.open_group(s.store, mode="w")
        g.create_array("features", shape=(0, *shape), chunks=(1, *shape), shards=shards, dtype="float16",
                       fill_value=0, dimension_names=("image", "y", "x", "channel"))
        s.commit("create")
        t0 = time.perf_counter()
        for i in range(0, images, batch):
            s = repo.writable_session("main")
            z = zarr.open_array(s.store, path="features", mode="r+")
            z.resize((i + batch, *shape))
            z[i : i + batch] = block
            s.commit(f"append {i}")
        seconds = time.perf_counter() - t0
        files = _files(path)
        out[name] = {"images": images, "batch": batch, "objects": len(files), "bytes": sum(files.values()),
                     "objects_per_image": len(files) / images, "bytes_per_image": sum(files.values()) / images,
                     "write_seconds": seconds}
    return out


def open_large(location: str, images: int) -> dict:
    """Seconds to open ``images`` images' features lazily with xarray, and to read one image."""
    import xarray as xr

    from maskbank.storage.layout import FEATURES, stage_group
    from maskbank.storage.store import Store

    st = Store.open(location)
    t0 = time.perf_counter()
    for i in range(0, images, 1000):
        st.write_features("open", _features(min(1000, images - i), 8, seed=2 + i))
    write = time.perf_counter() - t0
    session = Store.open(location, create=False).repo.readonly_session(branch="main")
    t0 = time.perf_counter()
    ds = xr.open_zarr(session.store, group=stage_group(FEATURES, "open"), consolidated=False)
    opened = time.perf_counter() - t0
    key = str(ds["image"].values[images // 2])
    t0 = time.perf_counter()
    one = ds["features"].sel(image=key).values
    read_one = time.perf_counter() - t0
    return {"images": int(ds.sizes["image"]), "write_seconds": write, "open_seconds": opened,
            "read_one_seconds": read_one, "one_image_shape": list(one.shape)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/storage.json"))
    parser.add_argument("--flow-images", type=int, default=12, help="labelled sample images in the objects run")
    parser.add_argument("--light", action="store_true", help="light model settings in the objects run")
    parser.add_argument("--images", type=int, default=200, help="images of the throughput run")
    parser.add_argument("--batch", type=int, default=8, help="images per commit in the throughput run")
    parser.add_argument("--open-images", type=int, default=10000)
    parser.add_argument("--count-layout", type=Path, help="count a per-item folder store instead, and stop")
    parser.add_argument("--smoke", action="store_true", help="2 flow images (light), 16 + 64 synthetic images")
    args = parser.parse_args(argv)
    origin = provenance("bench/storage.py", argv)
    if args.count_layout:
        res = count_layout(args.count_layout)
        rows = [[k, v["objects"], f"{v['bytes'] / 1e6:.2f}"] for k, v in res["per_stage"].items()]
        publish({"layout": res}, args.out, format_table(["stage", "files", "MB"], rows), origin)
        return
    if args.smoke:
        args.flow_images, args.light, args.images, args.open_images = 2, True, 16, 64
    results: dict = {"objects": count_objects(args.flow_images, args.light)}
    with tempfile.TemporaryDirectory(prefix="maskbank-storage-") as tmp:
        results["throughput"] = {"local": throughput(str(Path(tmp) / "tp"), args.images, args.batch)}
        results["open"] = {"local": open_large(str(Path(tmp) / "open"), args.open_images)}
        results["chunking"] = chunking(Path(tmp) / "chunking", args.images, args.batch, 16)
        sys.path.insert(0, str(ROOT / "tests"))  # the S3 server the tests start
        try:
            from s3server import SeaweedS3, weed_binary
        except ImportError:
            weed_binary = lambda: None  # noqa: E731
        if weed_binary() is not None:
            server = SeaweedS3(Path(tmp) / "seaweedfs")
            saved = {k: os.environ.get(k) for k in server.env()}
            try:
                os.environ.update(server.env())
                results["throughput"]["s3"] = throughput(f"s3://{server.bucket()}/tp", args.images, args.batch)
                results["open"]["s3"] = open_large(f"s3://{server.bucket()}/open", args.open_images)
            finally:
                server.stop()
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    o = results["objects"]
    lines = [f"objects and bytes per image per stage ({o['images']} distinct images, "
             f"{'light' if o['light'] else 'default'} settings, {o['files']} files, {o['bytes'] / 1e6:.1f} MB in all)",
             format_table(["stage", "commits", "objects", "objects/image", "kB/image"],
                          [[k, v["commits"], v["objects"], f"{v['objects_per_image']:.2f}", f"{v['bytes_per_image'] / 1e3:.1f}"]
                           for k, v in o["per_stage"].items()]),
             "", "features throughput (MB/s)",
             format_table(["where", "images", "per commit", "write", "read one by one"],
                          [[k, v["images"], v["batch"], f"{v['write_mb_per_s']:.1f}", f"{v['read_mb_per_s']:.1f}"]
                           for k, v in results["throughput"].items()]),
             "", f"features layouts, {args.batch} images appended per commit (local repository, all versions kept)",
             format_table(["layout", "images", "objects/image", "kB/image", "write s"],
                          [[k, v["images"], f"{v['objects_per_image']:.2f}", f"{v['bytes_per_image'] / 1e3:.0f}",
                            f"{v['write_seconds']:.1f}"] for k, v in results["chunking"].items()]),
             "", "lazy open of a large collection's features",
             format_table(["where", "images", "xr.open_zarr s", "read one image s"],
                          [[k, v["images"], f"{v['open_seconds']:.3f}", f"{v['read_one_seconds']:.3f}"]
                           for k, v in results["open"].items()])]
    publish(results, args.out, "\n".join(lines), origin)


if __name__ == "__main__":
    main()
