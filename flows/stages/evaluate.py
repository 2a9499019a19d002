"""Stage 7, evaluate: one dataset-wide confusion matrix of a label version against the pixel truth.

Published as an ``evaluation`` version whose metrics hold mIoU and per-class IoU over the dataset's classes
and, when the classes include the PASCAL VOC ones (e.g. COCO), over those 21 with other objects ignored.
Images whose truth cannot be read or does not fit the image are left out and listed with the reason in
the metrics' ``skipped``. A label map made at a reduced working size is scaled up to its truth.
"""

from __future__ import annotations

from maskbank.flows.keys import code_version
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.stages.common import cached_task
from maskbank.flows.stages.ingest import DatasetInput
from maskbank.storage.datasets import DatasetError, open_dataset, working_size
from maskbank.storage.layout import EVALUATION
from maskbank.storage.store import Store
from maskbank.storage.versions import get_version, publish_version, read_version, version_exists, version_id
from maskbank.tasks.classes import VOC_CLASSES
from maskbank.tasks.metrics import ConfusionMatrix, covers_voc, fit_to_truth, summarise

KIND = EVALUATION
MODULES = ("maskbank.tasks.metrics", "maskbank.tasks.classes", __name__)


@cached_task("evaluate", MODULES)
def evaluate(store: str, datasets: list[DatasetInput], collection: DatasetRef, labels_version: VersionRef) -> VersionRef:
    """Score ``labels_version``'s label maps on every image of ``collection`` that has truth."""
    st = Store.open(store, create=False)
    code = code_version(MODULES)
    vparams = {"background": collection.has_background}
    vid = version_id(KIND, vparams, [labels_version.id], collection.fingerprints, code_version=code)
    if version_exists(st, vid):
        return VersionRef(store=store, id=vid, kind=KIND, metrics=get_version(st, vid).metrics)

    scored = {str(k) for k in read_version(st, labels_version.id).arrays["image_key"]}
    names = collection.class_names
    cm = ConfusionMatrix(len(names))
    voc = ConfusionMatrix.for_subset(names) if covers_voc(names) else None
    n, skipped = 0, []
    for d in datasets:
        ds = open_dataset(d.spec())
        for rec, key in zip(ds.records, _keys_of(collection, ds.image_ids)):
            if not rec.has_truth or key not in scored:
                continue
            try:
                truth = ds.truth(rec.image_id)
            except DatasetError as e:
                skipped.append((rec.image_id, f"truth cannot be read: {e}"))
                continue
            pred, why = fit_to_truth(st.read_label_map(labels_version.id, key), truth, (rec.height, rec.width),
                                     working_size(truth.shape))
            if pred is None:
                skipped.append((rec.image_id, why))
                continue
            cm.update(pred, truth)
            if voc is not None:
                voc.update(pred, truth)
            n += 1
    metrics = {"images": n, "classes": summarise(cm, names, collection.has_background),
               "skipped": [list(s) for s in skipped]}
    arrays, dims = {"confusion": cm.matrix}, {"confusion": ("truth", "prediction")}
    if voc is not None:
        metrics["voc21"] = summarise(voc, list(VOC_CLASSES))
        arrays["confusion_voc21"] = voc.matrix
        dims["confusion_voc21"] = ("truth_voc", "prediction_voc")
    publish_version(st, KIND, vparams, [labels_version.id], collection.fingerprints, code_version=code, arrays=arrays,
                    dims=dims, metrics=metrics)
    return VersionRef(store=store, id=vid, kind=KIND, metrics=metrics)


def _keys_of(collection: DatasetRef, image_ids: list[str]) -> list[str | None]:
    row = {i: k for i, k in zip(collection.image_ids, collection.image_keys)}
    return [row.get(i) for i in image_ids]
