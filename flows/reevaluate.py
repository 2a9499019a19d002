"""Score a stored label version against the pixel truth of datasets, recomputing nothing else.

For a version made before the truth was at hand, on datasets with fixed or renamed annotations, or after a
change to the metric code: publishes an ``evaluation`` version and a report in the Prefect UI.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from maskbank.flows.credentials import load_credentials
from maskbank.flows.refs import DatasetRef, VersionRef
from maskbank.flows.report import publish_evaluation_report
from maskbank.flows.stages.common import checked, version_complete
from maskbank.flows.stages.evaluate import evaluate
from maskbank.flows.stages.ingest import DatasetInput, combine, ingest
from maskbank.storage.layout import LABEL_MAP_KINDS
from maskbank.storage.store import Store
from maskbank.storage.versions import VersionInfo, get_version, read_version

LABEL_KINDS = tuple(sorted(LABEL_MAP_KINDS))


@flow(name="maskbank-reevaluate", log_prints=True)
def reevaluate(store: str, version: str, datasets: list[DatasetInput], credentials: str | None = None) -> dict:
    """Evaluate the stored label version ``version`` on the images of ``datasets`` that have pixel truth.

    Args:
        store: path or URL of the maskbank store that holds the version.
        version: id of a pseudo_labels or predictions version (`maskbank versions <store>` lists them).
        datasets: datasets with pixel truth, among the images the version labelled (same class list).
        credentials: name of a Prefect Secret block holding the environment variables that reach an
            object-storage store (see ``maskbank.flows.credentials``).

    Returns:
        The evaluation's metrics: images scored, mIoU and per-class IoU.
    """
    load_credentials(credentials)
    st = Store.open(store, create=False)
    info = get_version(st, version)
    if info.kind not in LABEL_KINDS:
        raise ValueError(f"version {version} is a {info.kind!r} version; only {', '.join(LABEL_KINDS)} have label maps")
    collection = combine([ingest(d, store) for d in datasets])
    _check_scorable(st, info, collection)
    result = checked(evaluate, version_complete, store=store, datasets=datasets, collection=collection,
                     labels_version=VersionRef(store=store, id=info.id, kind=info.kind))
    metrics = result.metrics
    get_run_logger().info("version %s: mIoU %.4f over %d images (evaluation version %s)", version,
                          metrics["classes"]["miou"], metrics["images"], result.id)
    publish_evaluation_report(store, version, info.kind, datasets, metrics)
    return metrics


def _check_scorable(st: Store, info: VersionInfo, collection: DatasetRef) -> None:
    """Fail clearly when the datasets' classes differ from the version's or none of their truth was labelled."""
    version_classes = {tuple(st.read_manifest(fp).class_names) for fp in info.datasets}
    if tuple(collection.class_names) not in version_classes:
        raise ValueError(
            f"the datasets' classes differ from those version {info.id} was labelled with; rename classes to match"
        )
    labelled = {str(k) for k in read_version(st, info.id).arrays["image_key"]}
    if not any(t and k in labelled for k, t in zip(collection.image_keys, collection.has_truth)):
        raise ValueError(f"version {info.id} labels none of the datasets' images that have pixel truth")
