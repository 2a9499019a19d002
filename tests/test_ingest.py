"""Pooling datasets into one collection: each image keeps how its own dataset orients its pixels."""

from __future__ import annotations

from maskbank.flows.refs import DatasetRef
from maskbank.flows.stages.common import jobs_of
from maskbank.flows.stages.ingest import combine


def _ref(name: str, ids: list[str], exif: bool) -> DatasetRef:
    return DatasetRef(
        store="/tmp/s", fingerprint=name * 8, name=name, class_names=["background", "dog"], image_ids=ids,
        image_keys=[f"{i}{'' if exif else '-raw'}" for i in ids], paths=[f"/data/{name}/{i}.jpg" for i in ids],
        exif_transpose=[exif] * len(ids), labels=[[1]] * len(ids), has_truth=[False] * len(ids),
    )


def test_combined_collection_keeps_each_images_orientation():
    coco, folder = _ref("coco", ["a", "b"], exif=False), _ref("folder", ["c"], exif=True)
    pooled = combine([coco, folder])
    assert pooled.exif_transpose == [False, False, True]
    assert [(j.key, j.exif_transpose) for j in jobs_of(pooled)] == [("a-raw", False), ("b-raw", False), ("c", True)]
    assert pooled.fingerprints == [coco.fingerprint, folder.fingerprint]


def test_dataset_inputs_carry_every_reading_option_to_the_reader(tmp_path):
    from pathlib import Path

    from maskbank.flows.stages.ingest import DatasetInput

    spec = DatasetInput(path=str(tmp_path), format="masks", classes=["sky", "road"], ignore_index=0,
                        background=False).spec()
    assert (spec.format, spec.classes, spec.ignore_index, spec.background) == ("masks", ("sky", "road"), 0, False)
    assert DatasetInput(path=str(tmp_path), classes="c.txt").spec().classes == Path("c.txt")
    assert DatasetInput(path=str(tmp_path)).spec().ignore_index is None
