"""Stage 5, bank: ModuSeg's prototype bank from the pseudo-labels, built lazily with Dask over the stored
feature arrays. Published as a ``bank`` version (vectors, labels, source image)."""

from __future__ import annotations

import dask
import numpy as np

from maskbank.flows.keys import code_version
from maskbank.flows.params import BankParams
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.common import cached_task
from maskbank.flows.stages.labels import blocks, key_order
from maskbank.storage.layout import BANK
from maskbank.storage.store import Store
from maskbank.storage.versions import publish_version, read_version, version_exists, version_id
from maskbank.tasks.bank import BankBuilder, PrototypeBank, prototypes_for_image
from maskbank.tasks.purify import PurifyParams

KIND = BANK
MODULES = ("maskbank.tasks.bank", "maskbank.tasks.purify", "maskbank.tasks.pooling", __name__)
BLOCK_IMAGES = 256
"""Images whose prototypes are computed at once (their dense features are in memory together)."""


def purify_params(params: BankParams, image_hw: tuple[int, int]) -> PurifyParams:
    min_area = max(1, round(params.min_area * image_hw[0] * image_hw[1]))
    if params.erosion == "fixed":
        return PurifyParams(iterations=params.max_iterations, min_area=min_area, fallback=False)
    return PurifyParams(iterations="scaled", fraction=params.erosion_fraction, max_iterations=params.max_iterations,
                        min_area=min_area)


def _image_prototypes(store: str, features_key: str, labels_version: str, image_key: str, classes: list[int],
                      params: BankParams, background: bool) -> tuple[np.ndarray, np.ndarray]:
    st = Store.open(store, create=False)
    features, geometry = st.read_features(features_key, image_key)
    label_map = st.read_label_map(labels_version, image_key)
    return prototypes_for_image(features, geometry, label_map, classes, purify_params(params, geometry.image_hw),
                                background=0 if background else None)


@cached_task("bank", MODULES)
def build_bank(
    store: str, collection: DatasetRef, labels_version: VersionRef, features_key: str, params: BankParams
) -> VersionRef:
    """Prototypes per (image, class) of the labelled images, outliers filtered, as one version."""
    st = Store.open(store, create=False)
    seeds = read_version(st, labels_version.id)
    keys = [str(k) for k in seeds.arrays["image_key"]]
    vparams = {"bank": params.model_dump(), "features": features_key, "background": collection.has_background}
    code = code_version(MODULES)
    vid = version_id(KIND, vparams, [labels_version.id], collection.fingerprints, code_version=code)
    if version_exists(st, vid):
        return VersionRef(store=store, id=vid, kind=KIND)

    row_of = {k: i for i, k in enumerate(collection.image_keys)}
    classes = [collection.labels[row_of[k]] or [] for k in keys]
    builder = BankBuilder(collection.class_names, max_per_class=params.max_prototypes_per_class)
    background = [0] if collection.has_background else []  # a class list without background has no such prototypes
    by_key = key_order(range(len(keys)), keys)  # which images fill a class does not depend on the datasets' order
    for block in blocks(len(by_key), BLOCK_IMAGES):  # a block of images in flight at a time
        todo = [by_key[b] for b in block if not builder.full([*background, *classes[by_key[b]]])]
        parts = [dask.delayed(_image_prototypes)(store, features_key, labels_version.id, keys[j], classes[j], params,
                                                 collection.has_background) for j in todo]
        for j, (vectors, labels) in zip(todo, dask.compute(*parts, scheduler="threads")):
            builder.add(j, vectors, labels)
    bank = builder.build(drop_ratio=params.filter_ratio)
    arrays = {"vectors": bank.vectors, "labels": bank.labels, "prototype_image": bank.image_index,
              "image_key": np.array(keys), "class_name": np.array(collection.class_names)}
    dims = {"vectors": ("prototype", "channel"), "labels": ("prototype",), "prototype_image": ("prototype",),
            "image_key": ("image",), "class_name": ("class",)}
    info = publish_version(st, KIND, vparams, [labels_version.id], collection.fingerprints, code_version=code,
                           arrays=arrays, dims=dims, metrics={"prototypes": int(len(bank.labels)),
                                                              "per_class": bank.class_counts().tolist()})
    return VersionRef(store=store, id=info.id, kind=KIND)


def load_bank(store: Store, bank_version: str) -> PrototypeBank:
    a = read_version(store, bank_version).arrays
    return PrototypeBank(a["vectors"], a["labels"], a["prototype_image"], [str(c) for c in a["class_name"]])
