"""What looks wrong in a label version's maps against the image labels: the per-map checks and their tally,
the counts a label version stores as its maps are painted (read back as a cached run reads them), and the
main flow on a small folder where one image's label has no evidence, so that its map comes out all
background and the run's summary, log and report say so, on the first run and on a cached rerun."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskbank.flows.refs import VersionRef
from maskbank.flows.stages.labels import COVERAGE, EVIDENCE, LabelVersionWriter, coverage_of, label_version_ref
from maskbank.storage.store import Store
from maskbank.storage.versions import get_version, version_id
from maskbank.tasks import rle
from maskbank.tasks.coverage import CoverageTally, label_coverage, missing_labels, painted_classes

NAMES = ["background", "cat", "dog", "flower"]
CAT, DOG, FLOWER = 1, 2, 3


def _map(hw: tuple[int, int], blocks: dict[int, tuple[int, int, int, int]], dtype=np.uint8) -> np.ndarray:
    m = np.zeros(hw, dtype)
    for c, (y0, y1, x0, x1) in blocks.items():
        m[y0:y1, x0:x1] = c
    return m


def test_painted_classes_leave_out_background_and_values_beyond_the_classes():
    m = _map((6, 8), {DOG: (0, 2, 0, 2), FLOWER: (4, 6, 4, 8)})
    m[0, 7] = 255  # an ignore value
    assert painted_classes(m, len(NAMES)) == [DOG, FLOWER]
    assert painted_classes(m.astype(np.int32), len(NAMES)) == [DOG, FLOWER]
    assert painted_classes(m.astype(np.uint16), 3) == [DOG]
    assert painted_classes(np.zeros((5, 5), np.uint8), len(NAMES)) == []
    assert painted_classes(np.zeros((0, 0), np.uint8), len(NAMES)) == []


def test_missing_labels_are_the_image_labels_not_painted():
    assert missing_labels([DOG], [CAT, DOG, FLOWER]) == [CAT, FLOWER]
    assert missing_labels([DOG], [0, DOG]) == []
    assert missing_labels([], []) == []
    m = _map((4, 4), {CAT: (0, 1, 0, 1)})
    assert label_coverage(m, [CAT, DOG], len(NAMES)) == ([CAT], [DOG])


def test_tally_counts_each_check_over_labelled_images_only():
    t = CoverageTally(NAMES)
    t.add("b.jpg", [], [FLOWER])  # all background
    t.add("a.jpg", [], [FLOWER, DOG])  # all background
    t.add("c.jpg", [CAT], [CAT, DOG])  # dog missing
    t.add("d.jpg", [DOG], [DOG])  # fine
    t.add("e.jpg", [], [])  # labelled with no class: background is right
    t.add("f.jpg", [], None)  # unlabelled: not counted
    t.add("g.jpg", [CAT], [DOG])  # paints a class it is not labelled with, misses its own
    assert t.summary() == {
        "images": 6,
        "all_background": {"count": 2, "images": ["a.jpg", "b.jpg"]},
        "labels_missing": {"count": 2, "images": [{"image": "c.jpg", "classes": ["dog"]},
                                                  {"image": "g.jpg", "classes": ["dog"]}]},
        "classes_never_painted": [{"class": "flower", "images": 2}],
    }


def test_tally_names_the_first_images_by_id_and_counts_them_all():
    t = CoverageTally(NAMES, max_named=3)
    ids = [f"img{i:02d}" for i in range(10)]
    random.Random(0).shuffle(ids)
    for i in ids:
        t.add(i, [], [DOG])
        t.add(f"x{i}", [CAT], [CAT, DOG])
    s = t.summary()
    assert s["all_background"] == {"count": 10, "images": ["img00", "img01", "img02"]}
    assert s["labels_missing"]["count"] == 10
    assert [m["image"] for m in s["labels_missing"]["images"]] == ["ximg00", "ximg01", "ximg02"]
    assert s["classes_never_painted"] == [{"class": "dog", "images": 20}]


# ----- counts stored with a label version ---------------------------------------------------------------

PK = "p" * 24


def _write_proposals(st: Store, key: str, masks: list[np.ndarray], hw: tuple[int, int]) -> None:
    st.write_proposals(PK, [st.proposals_output(key, rle.encode(np.asarray(masks, bool)) if masks else [],
                                                image_hw=hw)])


def test_a_label_version_stores_its_counts_and_reads_them_back(tmp_path):
    """Maps painted by the stages' writer: one image whose only proposal is background (all background),
    one with no proposal at all, one missing a label, one fine; the counts are in the version's metrics,
    and a reference made later from the store carries the same."""
    hw = (12, 16)
    left, right = _map(hw, {1: (0, 12, 0, 8)}) > 0, _map(hw, {1: (0, 12, 8, 16)}) > 0
    st = Store.open(str(tmp_path / "s.mb"))
    images = {  # key: (image id, masks, proposal labels, image labels)
        "k1": ("rose.jpg", [left, right], [0, 0], [FLOWER]),
        "k2": ("empty.jpg", [], [], [FLOWER, CAT]),
        "k3": ("pets.jpg", [left, right], [CAT, 0], [CAT, DOG]),
        "k4": ("dog.jpg", [left], [DOG], [DOG]),
        "k5": ("target.jpg", [left], [0], None),
    }
    for key, (_, masks, _, _) in images.items():
        _write_proposals(st, key, masks, hw)
    params = {"seed": {"rounds": 0}}
    vid = version_id("pseudo_labels", params, [], ["fp"], code_version="test")
    writer = LabelVersionWriter(st, "pseudo_labels", vid, PK, len(NAMES), None, class_names=NAMES)
    for key, (image_id, masks, labels, image_labels) in images.items():
        writer.add(key, image_id, np.array(labels, np.int32), np.ones(len(labels), np.float32), image_labels)
    assert writer.publish(params, [], ["fp"], "test") == vid
    assert not st.read_label_map(vid, "k1").any() and not st.read_label_map(vid, "k2").any()

    expected = {
        "images": 4,
        "all_background": {"count": 2, "images": ["empty.jpg", "rose.jpg"]},
        "labels_missing": {"count": 1, "images": [{"image": "pets.jpg", "classes": ["dog"]}]},
        "classes_never_painted": [{"class": "flower", "images": 2}],
    }
    assert get_version(st, vid).metrics == {COVERAGE: expected}
    ref = label_version_ref(Store.open(str(tmp_path / "s.mb"), create=False), "store-as-named", "pseudo_labels", vid)
    assert ref.store == "store-as-named" and coverage_of(ref) == expected
    assert coverage_of(VersionRef(store="s", id=vid, kind="pseudo_labels")) is None


def test_a_writer_without_class_names_or_image_labels_counts_nothing(tmp_path):
    st = Store.open(str(tmp_path / "s.mb"))
    _write_proposals(st, "k1", [], (4, 4))
    vid = version_id("predictions", {}, [], ["fp"], code_version="test")
    writer = LabelVersionWriter(st, "predictions", vid, PK, 3, 0.4)
    writer.add("k1", "a.jpg", np.zeros(0, np.int32), np.zeros(0, np.float32))
    writer.publish({}, [], ["fp"], "test")
    assert get_version(st, vid).metrics[COVERAGE] == {
        "images": 0, "all_background": {"count": 0, "images": []},
        "labels_missing": {"count": 0, "images": []}, "classes_never_painted": []}


def test_label_evidence_names_thin_classes_and_classes_in_every_image():
    from maskbank.tasks.collection import ENOUGH_CLASS_IMAGES, THIN_CLASS_IMAGES, label_evidence

    labels = np.zeros((6, 4), bool)
    labels[:5, CAT] = True  # in every labelled image
    labels[:2, DOG] = True  # thin
    labels[1:5, FLOWER] = True  # exactly the threshold: not thin
    # image 5 has no labels and counts for nothing
    assert THIN_CLASS_IMAGES == 4
    assert label_evidence(labels, NAMES) == {
        "labelled_images": 5, "thin": [{"class": "dog", "images": 2}], "everywhere": ["cat"],
        "thin_below": THIN_CLASS_IMAGES, "enough": ENOUGH_CLASS_IMAGES}
    assert label_evidence(np.zeros((0, 4), bool), NAMES)["thin"] == []


def test_evidence_warnings_say_how_many_more_images_would_help():
    from maskbank.flows.report import evidence_warnings

    evidence = {"labelled_images": 9, "thin": [{"class": f"c{k}", "images": 1 + k % 3} for k in range(7)],
                "everywhere": ["sky", "road"], "thin_below": 4, "enough": 9}
    thin, everywhere = evidence_warnings(evidence, shown=2)
    assert thin == ("pseudo-labels: 7 classes are in fewer than 4 labelled images, too few for reliable seeds: "
                    "c0 (1 image: label 3 more), c1 (2 images: label 2 more) and 5 more; seeds improve up to about 9 "
                    "labelled images per class")
    assert everywhere.startswith("pseudo-labels: sky, road are in every labelled image")
    assert evidence_warnings(None) == [] and evidence_warnings({**evidence, "thin": [], "everywhere": []}) == []


# ----- through the main flow ------------------------------------------------------------------------------

FOLDER_LABELS = {"a.png": "cow", "b.png": "cow", "c.png": "cow", "d.png": "flower"}


def _field(rng: np.random.Generator, cow: bool) -> np.ndarray:
    h, w = 96, 128
    image = np.empty((h, w, 3), np.float32)
    image[:40] = (90, 150, 230)
    image[40:] = (60, 160, 50)
    if cow:
        yy, xx = np.mgrid[:h, :w]
        cy, cx = int(rng.integers(55, 80)), int(rng.integers(30, 98))
        image[((yy - cy) / 12) ** 2 + ((xx - cx) / 22) ** 2 <= 1] = (110, 70, 40)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> Path:
    """Three images labelled cow and one labelled flower, a class no other image has: with label claims
    and the foreground prior off, nothing can show a flower, so d.png's map is all background."""
    root = tmp_path_factory.mktemp("fields")
    rng = np.random.default_rng(3)
    for name, label in FOLDER_LABELS.items():
        Image.fromarray(_field(rng, label == "cow")).save(root / name)
    (root / "labels.csv").write_text("image,labels\n" + "".join(f"{n},{c}\n" for n, c in FOLDER_LABELS.items()))
    return root


def _run(folder: Path, store: Path):
    """One run of the main flow on ``folder``: its summary, its artifacts by key and its warning lines."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId, LogFilterLevel,
    )
    from prefect.logging.handlers import APILogHandler

    from maskbank.flows.label import label_images
    from maskbank.flows.params import EmbedParams, ProposeParams, RunParams, SeedParams
    from maskbank.flows.stages.ingest import DatasetInput

    params = RunParams(propose=ProposeParams(points_per_side=4), embed=EmbedParams(long_side=224),
                       seed=SeedParams(claim_labels=False, saliency_weight=0.0), shard_size=2)
    state = label_images(datasets=[DatasetInput(path=str(folder))], store=str(store), params=params, device="cpu",
                         return_state=True)
    flow_run = state.state_details.flow_run_id
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run]),
                                          level=LogFilterLevel(ge_=logging.WARNING)))
    return state.result(), {a.key: a.data for a in arts}, [log.message for log in logs]


@pytest.fixture(scope="module")
def field_runs(prefect_harness, one_thread, fields, tmp_path_factory):
    store = tmp_path_factory.mktemp("fields-store") / "s.mb"
    return store, _run(fields, store), _run(fields, store)


@pytest.mark.real
def test_the_run_says_which_maps_are_all_background(field_runs):
    from maskbank.flows.report import REPORT_KEY, summary_warnings

    store, (summary, artifacts, logs), _ = field_runs
    coverage = summary.pseudo_label_coverage
    assert coverage["images"] == 4 and summary.prediction_coverage is None
    assert "d.png" in coverage["all_background"]["images"]
    assert {"class": "flower", "images": 1} in coverage["classes_never_painted"]
    st = Store.open(str(store), create=False)
    assert get_version(st, summary.pseudo_labels).metrics[COVERAGE] == coverage
    evidence = summary.pseudo_label_evidence  # cow in 3 labelled images, flower in 1: both below 4
    assert evidence["thin"] == [{"class": "cow", "images": 3}, {"class": "flower", "images": 1}]
    assert evidence["everywhere"] == [] and get_version(st, summary.pseudo_labels).metrics[EVIDENCE] == evidence
    warnings = summary_warnings(summary)
    assert warnings[0] == ("pseudo-labels: 2 classes are in fewer than 4 labelled images, too few for reliable seeds: "
                           "cow (3 images: label 1 more), flower (1 image: label 3 more); seeds improve up to about 9 "
                           "labelled images per class")
    assert any(w.startswith("pseudo-labels: ") and "all background" in w and "d.png" in w for w in warnings)
    assert any("got no pixel in any image labelled with" in w and "flower (labels 1 image)" in w for w in warnings)
    assert [m for m in logs if m.startswith("looks wrong: ")] == [f"looks wrong: {w}" for w in warnings]
    report = artifacts[REPORT_KEY]
    assert "## Check these" in report and "d.png" in report.split("## Datasets")[0]
    assert "cow (3 images: label 1 more)" in report.split("## Datasets")[0]


@pytest.mark.real
def test_the_counts_match_the_stored_maps(field_runs, fields):
    """Recounted from the label maps in the store, image by image, the counts are the run's."""
    from maskbank.storage.datasets import open_dataset
    from maskbank.storage.layout import LABELS

    store, (summary, _, _), _ = field_runs
    st = Store.open(str(store), create=False)
    ds = open_dataset(fields)
    keys = dict(zip(st.read_manifest(summary.labelled).image_ids,
                    st.read_attrs(st.manifest_path(summary.labelled))["image_keys"]))
    assert sorted(st.list_items(LABELS, summary.pseudo_labels)) == sorted(keys.values())
    tally = CoverageTally(ds.class_names)
    for record in ds.records:
        painted, _ = label_coverage(st.read_label_map(summary.pseudo_labels, keys[record.image_id]), record.labels,
                                    len(ds.class_names))
        tally.add(record.image_id, painted, record.labels)
    assert tally.summary() == summary.pseudo_label_coverage
    assert not st.read_label_map(summary.pseudo_labels, keys["d.png"]).any()
    from maskbank.storage.versions import read_version

    score = read_version(st, summary.pseudo_labels).arrays["proposal_score"]  # each label's probability
    assert len(score) and ((score > 0) & (score <= 1)).all()
    assert (score < 1).any()  # background or the label: not certain


@pytest.mark.real
def test_a_cached_rerun_says_the_same(field_runs):
    from maskbank.flows.report import REPORT_KEY, summary_warnings

    _, (first, first_artifacts, _), (again, artifacts, logs) = field_runs
    assert again.pseudo_labels == first.pseudo_labels and again.bank == first.bank
    assert sum(again.computed.values()) == 0  # every per-image stage served from the store
    assert again.pseudo_label_coverage == first.pseudo_label_coverage
    assert again.pseudo_label_evidence == first.pseudo_label_evidence
    assert summary_warnings(again) == summary_warnings(first) != []
    assert [m for m in logs if m.startswith("looks wrong: ")] == [f"looks wrong: {w}" for w in summary_warnings(again)]
    check = lambda text: text.split("## Check these")[1].split("## Datasets")[0]
    assert check(artifacts[REPORT_KEY]) == check(first_artifacts[REPORT_KEY])
