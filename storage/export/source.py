"""What an export reads: a label version's images, classes and painting, and each image's labels brought
to its image file (full size, stored orientation).

The images of a ``pseudo_labels`` or ``predictions`` version are the records of its datasets' manifests
whose content key it labelled; each is exported under its dataset id without the image file's extension.
Its classes are those of the prototype bank it was retrieved with or the segmentation head it was labelled
by (predictions), or of its datasets. Its label maps were painted by ``paint_by_score`` from its proposals
(the version's ``proposals`` parameter) with the version's per-proposal labels and scores: seeding and the
head paint without NMS, retrieval with its ``nms_iou``; a head also fills the pixels outside every proposal.
Painting again gives each covered pixel's proposal, checked against the stored map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import ExifTags, Image

from maskbank.storage.datasets import ImageError, working_size
from maskbank.storage.datasets.images import IMAGE_EXTENSIONS
from maskbank.storage.layout import (
    BANK, LABEL_MAP_KINDS, PREDICTIONS, PROPOSALS, PSEUDO_LABELS, SEGMENTER, stage_group, version_group,
)
from maskbank.storage.store import MissingItemError, Store
from maskbank.storage.versions import VersionInfo, get_version, list_versions
from maskbank.tasks.export import (
    Painting, exported_labels, ignore_index, mean_score, shown_size, to_file_frame, without_background,
)
from maskbank.tasks.paint import owner_labels, paint_owner

LABEL_KINDS = tuple(sorted(LABEL_MAP_KINDS))


class ExportError(ValueError):
    """An export cannot be made as asked (found before any work; the message says why)."""


class SkipImage(Exception):
    """One image cannot be exported (the message says why); the others are."""


@dataclass(frozen=True)
class ExportImage:
    """One image of an export: its dataset id, the name its files get, its content key and its file."""

    image_id: str
    name: str
    key: str
    path: Path
    exif_transpose: bool
    dataset_root: Path
    dataset_name: str
    labels: tuple[int, ...] | None = None
    """The image's labels (indices of the stored class list, without background); None: unlabelled."""
    has_truth: bool = False
    dataset: str = ""
    """Fingerprint of the image's dataset in the store."""


@dataclass(frozen=True)
class ExportedImage:
    """One image's exported labels, at its file's size and in its file's pixel orientation: class indices
    with ignore where masked, and (for instances) the proposal that painted each pixel (-1: none) with every
    proposal's label and score."""

    labels: np.ndarray
    owner: np.ndarray | None
    proposal_labels: np.ndarray
    proposal_scores: np.ndarray
    confidence: float | None = None
    """Mean score of the proposals that painted the exported labels, over their pixels (with a painting)."""


def label_version(st: Store, version: str | None) -> VersionInfo:
    """The version ``version`` (an id) of a kind with label maps, or the newest ``pseudo_labels`` version."""
    if version is None:
        newest = list_versions(st, PSEUDO_LABELS)
        if not newest:
            raise ExportError(f"no {PSEUDO_LABELS} version in {st.url}; name a version (`maskbank versions` lists them)")
        return newest[-1]
    try:
        info = get_version(st, version)
    except (MissingItemError, ValueError):
        raise ExportError(f"no version {version!r} in {st.url}") from None
    if info.kind not in LABEL_KINDS:
        raise ExportError(f"version {info.id} is a {info.kind} version; only {' and '.join(LABEL_KINDS)} versions have label maps")
    return info


def version_classes(st: Store, info: VersionInfo) -> list[str]:
    """Class names of a version's label indices: its prototype bank's (predictions), else its datasets'."""
    for parent in info.parents:
        if get_version(st, parent).kind in (BANK, SEGMENTER):
            return [str(c) for c in st.at_version(parent).read_array(version_group(parent), "class_name")]
    if not info.datasets:
        raise ExportError(f"version {info.id} names no dataset, so no class list")
    return st.read_manifest(info.datasets[0]).class_names


def version_background(st: Store, info: VersionInfo) -> bool:
    """Whether the version's class list has a background class, as its seeding (``background`` parameter)
    or the prototype bank it was retrieved with recorded; without one, label 0 only marks pixels no class
    was painted on."""
    if "background" in info.params:
        return bool(info.params["background"])
    for parent in info.parents:
        bank = get_version(st, parent)
        if bank.kind == BANK:
            return bool(bank.params.get("background", True))
    return True


def painting_nms(info: VersionInfo) -> float | None:
    """The mask NMS threshold the version's label maps were painted with (see the module's docstring)."""
    if info.kind == PREDICTIONS:
        return info.params.get("retrieve", {}).get("nms_iou")
    return None


def proposals_key(st: Store, info: VersionInfo) -> str:
    """The stage key of the proposals the version's label maps were painted from."""
    key = info.params.get("proposals")
    if not isinstance(key, str) or not st.exists(stage_group(PROPOSALS, key)):
        raise ExportError(f"version {info.id} names no proposals in {st.url}, so its pixels' proposals are unknown")
    return key


def export_name(image_id: str) -> str:
    """The name an image's exported files get: its dataset id without an image file extension."""
    p = PurePosixPath(image_id)
    return p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_EXTENSIONS else image_id


def export_images(st: Store, info: VersionInfo, labelled: set[str]) -> list[ExportImage]:
    """The images of ``info``'s datasets whose content key is in ``labelled``, by name."""
    images = []
    for fp in info.datasets:
        m = st.read_manifest(fp)
        keys = st.read_attrs(st.manifest_path(fp))["image_keys"]
        images += [ExportImage(r.image_id, export_name(r.image_id), k, Path(r.path), m.exif_transpose, m.root, m.name,
                               r.labels, r.has_truth, fp)
                   for r, k in zip(m.records, keys, strict=True) if k in labelled]
    images.sort(key=lambda i: i.name)
    clashes = [(a.image_id, b.image_id) for a, b in zip(images, images[1:]) if a.name == b.name]
    if clashes:
        a, b = clashes[0]
        raise ExportError(f"images {a!r} and {b!r} would both be exported as {export_name(a)!r}; rename one")
    return images


def file_frame(path: Path, exif_transpose: bool) -> tuple[tuple[int, int], int]:
    """``((height, width), EXIF orientation)`` of an image file as stored; the orientation is 1 unless the
    dataset applies it (folder datasets do, COCO and VOC do not)."""
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1) if exif_transpose else 1
            return (im.height, im.width), orientation if orientation in range(1, 9) else 1
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image header {path}: {e}") from e


class LabelReader:
    """Reads a version's images' labels for export, from a store opened at that version."""

    def __init__(self, st: Store, version: str, num_classes: int, proposals: str | None, nms_iou: float | None,
                 arrays: dict[str, np.ndarray], background: bool = True) -> None:
        """``num_classes``: of the stored label maps; ``background``: whether their class 0 is a class (else
        the exported labels leave it out, see :func:`without_background`)."""
        self.st, self.version, self.num_classes, self.background = st, version, num_classes, background
        self.proposals, self.nms_iou = proposals, nms_iou
        self.row = {str(k): i for i, k in reversed(list(enumerate(arrays["image_key"])))}
        self.proposal_image = np.asarray(arrays["proposal_image"])
        self.labels = np.asarray(arrays["proposal_label"], np.int64)
        self.scores = np.asarray(arrays["proposal_score"], np.float32)

    def read(self, image: ExportImage, min_score: float | None, unlabelled_ignore: bool,
             instances: bool) -> ExportedImage:
        """The image's exported labels; raises :class:`SkipImage` when they cannot be made."""
        try:
            label_map = self.st.read_label_map(self.version, image.key)
            file_hw, orientation = file_frame(image.path, image.exif_transpose)
        except (MissingItemError, ImageError) as e:
            raise SkipImage(str(e)) from None
        made_at = working_size(shown_size(file_hw, orientation))
        if label_map.shape != made_at:
            raise SkipImage(f"its label map is {label_map.shape[0]}x{label_map.shape[1]} but {image.path} is labelled "
                            f"at {made_at[0]}x{made_at[1]}: the file changed since it was labelled")
        rows = self._rows(image.key)
        painting = None
        if self.proposals is not None:  # the plan names them where the export needs each pixel's proposal
            painting = self._painting(image.key, label_map, rows)
        labels, owner = exported_labels(label_map, self.num_classes, painting, min_score, unlabelled_ignore)
        proposal_labels = self.labels[rows]
        if not self.background:  # label 0 is unpainted: its pixels have no owner already
            labels = without_background(labels, ignore_index(self.num_classes), self.num_classes - 1)
            proposal_labels = proposal_labels - 1
        return ExportedImage(to_file_frame(labels, file_hw, orientation),
                             to_file_frame(owner, file_hw, orientation) if instances else None,
                             proposal_labels, self.scores[rows],
                             None if owner is None else mean_score(owner, painting.scores))

    def _rows(self, key: str) -> slice:
        i = self.row[key]
        lo, hi = np.searchsorted(self.proposal_image, [i, i + 1])
        return slice(int(lo), int(hi))

    def _painting(self, key: str, label_map: np.ndarray, rows: slice) -> Painting:
        try:
            masks = self.st.read_proposals(self.proposals, key).masks()
        except MissingItemError as e:
            raise SkipImage(str(e)) from None
        labels, scores = self.labels[rows], self.scores[rows]
        if len(masks) != len(labels):
            raise SkipImage(f"the version has {len(labels)} proposal labels but the image has {len(masks)} proposals")
        owner = paint_owner(masks, labels, scores, nms_iou=self.nms_iou)
        covered = masks.any(axis=0)  # pixels outside every proposal may have been filled by a segmentation head
        if not np.array_equal(owner_labels(owner, labels, self.num_classes)[covered], label_map[covered]):
            raise SkipImage("its label map is not the painting of its proposals, so its pixels' proposals are unknown")
        return Painting(owner, scores, covered)
