"""``maskbank inspect``, ``show`` and ``compare``: look inside a store without writing code.

``inspect`` prints the store as a tree (as it is now, or as of one of its versions); ``show`` draws one
image's layer (proposal outlines, feature PCA, saliency, seed / prediction / truth label maps) beside the
photo as a PNG; ``compare`` measures where two label versions differ and how their per-class IoU moved.
A version's label maps are always read as of the commit that published it, so what a version shows never
changes with later runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from maskbank.commands.helptext import PlainCommand
from maskbank.commands.stores import StoreArg, fail, open_store
from maskbank.storage.layout import PREDICTIONS, PSEUDO_LABELS


class Layer(str, Enum):
    masks = "masks"
    features = "features"
    saliency = "saliency"
    seeds = "seeds"
    prediction = "prediction"
    truth = "truth"


LABEL_LAYERS = {Layer.seeds: PSEUDO_LABELS, Layer.prediction: PREDICTIONS}


def register(app: typer.Typer) -> None:
    """Add the ``inspect``, ``show`` and ``compare`` commands to ``app``."""
    app.command("inspect", cls=PlainCommand)(inspect_store)
    app.command("show", cls=PlainCommand)(show)
    app.command("compare", cls=PlainCommand)(compare)


def inspect_store(
    store: StoreArg,
    version: Annotated[Optional[str], typer.Option(metavar="VERSION", help="Show the store as of this version's commit (id or prefix).")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Also list every image of each stage key, and the bookkeeping arrays.")] = False,
) -> None:
    """Print what a store holds, as a tree: datasets, stage keys, label maps and versions.

    Each dataset with its image counts and class names; each per-image stage key (proposals, features,
    pooled) with its images, the settings it was computed with and the versions that used it; the label
    maps and the versions with their settings, datasets and headline metric; every array with its dims,
    shape, chunks, dtype and bytes stored and in memory. With --version, the store as that version's commit
    holds it, whatever was written since.

    \b
    Example:
      maskbank inspect photos-store
      # as the store was when version 3f2a was published, every image listed
      maskbank inspect photos-store --version 3f2a --all
    """
    from maskbank.commands.tree import store_tree

    st = open_store(store, version)
    with _reported():
        for line in store_tree(st, show_all=show_all):
            typer.echo(line)


def show(
    store: StoreArg,
    image_id: Annotated[str, typer.Argument(metavar="IMAGE_ID", help="Dataset image id: a COCO or VOC image's id (000000196610), an image folder's file path in it (000000196610.jpg).")],
    layer: Annotated[Layer, typer.Option(metavar="LAYER", help="What to draw beside the photo: masks, features, saliency, seeds, prediction or truth.", show_default=False)],
    version: Annotated[Optional[str], typer.Option(metavar="VERSION", help="seeds/prediction: version id or prefix, read as of its own commit (default: the newest holding the image).")] = None,
    key: Annotated[Optional[str], typer.Option(metavar="KEY", help="masks/features/saliency: stage key or prefix, when several hold the image.")] = None,
    out: Annotated[Optional[Path], typer.Option(metavar="FILE", help="PNG to write (default: <image id>-<layer>.png).")] = None,
) -> None:
    """Draw one image's layer beside its photo as a PNG: proposals, features, saliency or a label map.

    masks: the SAM proposals' outlines; features: the feature PCA as colours; saliency: a heat map; seeds:
    the pseudo-labels of a labelled image; prediction: the labels of an image to label; truth: the
    dataset's pixel truth. A label map comes with a legend of its classes.

    \b
    Example:
      # the pseudo-labels of the labelled image 000000196610.jpg, into 000000196610.jpg-seeds.png
      maskbank show photos-store 000000196610.jpg --layer seeds
      maskbank show photos-store 000000196610.jpg --layer masks --out masks.png
    """
    from maskbank.commands.lookup import find_image
    from maskbank.storage.datasets import load_rgb

    st = open_store(store)
    with _reported():
        ref = find_image(st, image_id)
        photo = load_rgb(ref.path, exif_transpose=ref.manifest.exif_transpose)
        panels, titles = _layer_panels(st, ref, photo, layer, version, key)
    out = out or Path(f"{image_id.replace('/', '_')}-{layer.value}.png")
    _save(panels, titles, out)


def compare(
    store: StoreArg,
    versions: Annotated[tuple[str, str], typer.Option("--versions", metavar="A B", help="The two label versions to compare, ids or prefixes, separated by a space.")],
    image: Annotated[Optional[str], typer.Option(metavar="IMAGE_ID", help="Also draw this dataset image: A | B | pixels that differ.")] = None,
    out: Annotated[Optional[Path], typer.Option(metavar="FILE", help="PNG for --image (default: <image>-<A>-vs-<B>.png).")] = None,
) -> None:
    """Where two label versions differ: the share of differing pixels per image and the IoU change.

    A and B are pseudo_labels or predictions versions (maskbank versions lists them). For every image both
    labelled: the share of its pixels whose label differs; when both were evaluated, each class's IoU in A
    and B and the change.

    \b
    Example:
      # pseudo-labels of the labelled images before (3f2a) and after (9c1e) a change of parameters
      maskbank compare photos-store --versions 3f2a 9c1e
      maskbank compare photos-store --versions 3f2a 9c1e --image 000000196610.jpg --out diff.png
    """
    from maskbank.commands.lookup import LABEL_KINDS, resolve_version

    if out is not None and image is None:
        raise typer.BadParameter("--out names the picture of one image; give --image too")
    st = open_store(store)
    picture = None
    with _reported():
        a, b = (resolve_version(st, v, LABEL_KINDS) for v in versions)
        _pixel_differences(st, a, b)
        _iou_change(st, a, b)
        if image is not None:
            picture = _difference_panels(st, image, a, b)
    if picture is not None:
        _save(*picture, out or Path(f"{image.replace('/', '_')}-{a.id[:8]}-vs-{b.id[:8]}.png"))


def _pixel_differences(st, a, b) -> None:
    """Print the share of pixels whose label differs, per image labelled by both versions and overall."""
    from maskbank.commands.lookup import as_published
    from maskbank.storage.layout import LABELS

    at_a, at_b = as_published(st, a), as_published(st, b)
    keys_a, keys_b = set(at_a.list_items(LABELS, a.id)), set(at_b.list_items(LABELS, b.id))
    common = sorted(keys_a & keys_b)
    typer.echo(f"A {a.id} ({a.kind}, {len(keys_a)} images)   B {b.id} ({b.kind}, {len(keys_b)} images)   "
               f"{len(common)} images in both")
    if not common:
        typer.echo("no image has a label map in both versions")
    differing = total = 0
    for k in common:
        out_a = at_a.read_image(LABELS, a.id, k).arrays
        la, lb = out_a["labels"], at_b.read_label_map(b.id, k)
        source = str(out_a["source_image_id"]) or k
        if la.shape != lb.shape:
            typer.echo(f"  {source:<24} {k}  label maps of different sizes {la.shape} / {lb.shape}")
            continue
        n = int((la != lb).sum())
        differing, total = differing + n, total + la.size
        typer.echo(f"  {source:<24} {k}  {n / la.size:7.2%} of pixels differ ({n} of {la.size})")
    if total:
        typer.echo(f"  {'all':<24} {'':<{len(common[0])}}  {differing / total:7.2%} of pixels differ")
    for name, only in (("A", keys_a - keys_b), ("B", keys_b - keys_a)):
        if only:
            typer.echo(f"only in {name}: {len(only)} images (IoU changes below mix other images with other labels)")


def _layer_panels(st, ref, photo: np.ndarray, layer: Layer, version: str | None, key: str | None):
    """``(panels, titles)`` of ``layer`` for the image ``ref``."""
    from maskbank.commands.lookup import (
        NotInStoreError, as_published, class_names_of, latest_labels_version, open_truth, resolve_version, stage_key,
    )
    from maskbank.storage.layout import FEATURES, LABELS, PROPOSALS
    from maskbank.tasks import render

    name = f"{ref.image_id} ({ref.manifest.name})"
    if layer == Layer.masks:
        pk = stage_key(st, PROPOSALS, ref.key, key)
        props = st.read_proposals(pk, ref.key)
        _same_size(props.image_hw, photo, f"proposals/{pk}")
        return [photo, render.draw_outlines(photo, props.masks())], [name, f"{len(props)} proposals  ({pk})"]
    if layer == Layer.features:
        fk = stage_key(st, FEATURES, ref.key, key)
        features, geometry = st.read_features(fk, ref.key)
        _same_size(geometry.image_hw, photo, f"features/{fk}")
        rgb = render.to_uint8(geometry.to_image(render.pca_rgb(features)))
        h, w, c = features.shape
        return [photo, rgb], [name, f"features PCA: {h}x{w} tokens, {c} channels  ({fk})"]
    if layer == Layer.saliency:
        sk = stage_key(st, FEATURES, ref.key, key, having=st.features_have_saliency, what="features keys with saliency")
        sal = st.read_saliency(sk, ref.key).astype(np.float32)
        heat = render.heatmap(render.resize(sal, photo.shape[:2]))
        return [photo, heat], [name, f"saliency {np.nanmin(sal):.2f} (black) .. {np.nanmax(sal):.2f} (yellow)  ({sk})"]
    if layer == Layer.truth:
        truth, ignore = open_truth(ref)
        title = "truth"
        if truth.shape != photo.shape[:2]:  # an image over the working size is processed downscaled
            title += f" (downscaled from {truth.shape[0]}x{truth.shape[1]})"
            truth = render.resize(truth, photo.shape[:2], nearest=True)
        return _label_panels(photo, truth, ref.manifest.class_names, ignore, name, title)
    kind = LABEL_LAYERS[layer]
    v = resolve_version(st, version, (kind,)) if version else latest_labels_version(st, kind, ref)
    published = as_published(st, v)
    if not published.has_item(LABELS, v.id, ref.key):
        raise NotInStoreError(f"{kind} version {v.id} has no label map of image {ref.image_id!r}")
    labels = published.read_label_map(v.id, ref.key)
    _same_size(labels.shape, photo, f"labels/{v.id}")
    return _label_panels(photo, labels, class_names_of(st, v, ref.manifest), None, name, f"{kind} {v.id}")


def _label_panels(photo, labels, class_names, ignore, name, title):
    from maskbank.tasks import render

    legend = render.class_legend([labels], class_names, ignore)
    return [photo, render.colorize_labels(labels, ignore), legend], [name, title, "classes"]


def _difference_panels(st, image_id: str, a, b):
    from maskbank.commands.lookup import NotInStoreError, as_published, class_names_of, find_image
    from maskbank.storage.datasets import load_rgb
    from maskbank.storage.layout import LABELS
    from maskbank.tasks import render

    ref = find_image(st, image_id)
    maps = []
    for v in (a, b):
        published = as_published(st, v)
        if not published.has_item(LABELS, v.id, ref.key):
            raise NotInStoreError(f"version {v.id} has no label map of image {image_id!r}")
        maps.append(published.read_label_map(v.id, ref.key))
    la, lb = maps
    photo = load_rgb(ref.path, exif_transpose=ref.manifest.exif_transpose)
    for v, lab in ((a, la), (b, lb)):
        _same_size(lab.shape, photo, f"labels/{v.id}")
    diff = la != lb
    names = class_names_of(st, a, ref.manifest)
    panels = [render.colorize_labels(la), render.colorize_labels(lb), render.highlight(photo, diff),
              render.class_legend([la, lb], names)]
    titles = [f"A {a.id} ({a.kind})", f"B {b.id} ({b.kind})", f"{image_id}: {diff.mean():.2%} differ (red)", "classes"]
    return panels, titles


def _iou_change(st, a, b) -> None:
    from maskbank.storage.layout import EVALUATION
    from maskbank.storage.versions import list_versions

    evals = {}
    for v in list_versions(st, EVALUATION):
        for parent in (a.id, b.id):
            if v.parents == (parent,) and v.metrics:
                evals[parent] = v
    missing = [x.id for x in (a, b) if x.id not in evals]
    if missing:
        typer.echo(f"no per-class IoU change: no evaluation version of {', '.join(missing)}")
        return
    ma, mb = evals[a.id].metrics, evals[b.id].metrics
    typer.echo(f"evaluations: A {evals[a.id].id} ({ma['images']} images), B {evals[b.id].id} ({mb['images']} images)")
    for part in ("classes", "voc21"):
        if part not in ma or part not in mb:
            continue
        ia, ib = ma[part]["iou"], mb[part]["iou"]
        typer.echo(f"{'class' if part == 'classes' else 'VOC-21 class':<20} {'IoU A':>8} {'IoU B':>8} {'change':>8}")
        for cls in ia:
            if ia[cls] is None and ib.get(cls) is None:
                continue
            typer.echo(f"{cls:<20} {_fmt(ia[cls])} {_fmt(ib.get(cls))} {_fmt_change(ia[cls], ib.get(cls))}")
        typer.echo(f"{'mIoU':<20} {_fmt(ma[part]['miou'])} {_fmt(mb[part]['miou'])} "
                   f"{_fmt_change(ma[part]['miou'], mb[part]['miou'])}")


def _fmt(v: float | None) -> str:
    return f"{'-':>8}" if v is None else f"{v:8.4f}"


def _fmt_change(x: float | None, y: float | None) -> str:
    return f"{'-':>8}" if x is None or y is None else f"{y - x:+8.4f}"


def _same_size(hw, photo: np.ndarray, what: str) -> None:
    from maskbank.commands.lookup import NotInStoreError

    if tuple(hw[:2]) != photo.shape[:2]:
        raise NotInStoreError(f"{what} is {tuple(hw[:2])} but the photo reads as {photo.shape[:2]}")


def _save(panels, titles, out: Path) -> None:
    from PIL import Image

    from maskbank.tasks.render import side_by_side

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(side_by_side(panels, titles)).save(out)
    typer.echo(f"wrote {out}")


@contextmanager
def _reported() -> Iterator[None]:
    """Report what is not in the store (or unreadable) as a one-line error and exit code 1."""
    from maskbank.commands.lookup import NotInStoreError
    from maskbank.storage.datasets import ImageError
    from maskbank.storage.store import MissingItemError

    try:
        yield
    except (NotInStoreError, ImageError, MissingItemError) as e:
        fail(str(e), 1)
