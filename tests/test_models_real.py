"""The real checkpoints (MobileSAM, DINOv2-S) on one bundled-licence COCO image."""

from math import ceil
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskbank.storage.weights import fetch
from maskbank.tasks.embed import EmbedConfig, FeatureExtractor
from maskbank.tasks.models.backbone import load_backbone
from maskbank.tasks.models.sam import build_sam
from maskbank.tasks.propose import MaskProposer, ProposerConfig, non_overlapping

pytestmark = pytest.mark.real

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "maskbank/sample/coco/train2017/000000196610.jpg"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    bgr = cv2.imread(str(SAMPLE_IMAGE))
    assert bgr is not None, f"sample image missing: {SAMPLE_IMAGE}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_mobile_sam_512_proposes_masks(image):
    config = ProposerConfig(input_size=512, points_per_side=16, bf16=True)
    props = MaskProposer.from_checkpoint(fetch("mobile_sam"), config)(image)
    h, w = image.shape[:2]
    assert props.image_hw == (h, w)
    assert len(props) >= 5
    assert (props.predicted_iou > config.pred_iou_thresh).all() and (props.predicted_iou < 1.2).all()
    assert (props.stability_score >= config.stability_score_thresh).all() and (props.stability_score <= 1).all()
    assert (props.area > 0).all() and (props.area < h * w).all()
    x, y, bw, bh = props.bbox.T
    assert (x >= 0).all() and (y >= 0).all() and (x + bw <= w).all() and (y + bh <= h).all()
    regions = non_overlapping(props, config.min_area_pixels((h, w)))
    assert 1 <= len(regions) <= len(props)
    assert regions.masks().sum(axis=0).max() == 1


def test_mobile_sam_checkpoint_loads_strict_at_1024():
    sam = build_sam("vit_t", fetch("mobile_sam"), image_size=1024)
    assert sam.image_encoder.img_size == 1024


def test_dinov2_s_feature_grid(image):
    config = EmbedConfig()
    grid = FeatureExtractor(load_backbone(fetch("dinov2_s")), config)(image)
    rh, rw = grid.geometry.resized_hw
    assert max(rh, rw) == config.long_side
    assert grid.features.shape == (ceil(rh / 14), ceil(rw / 14), 384)
    f = grid.features.astype(np.float32)
    assert np.isfinite(f).all()
    assert f.reshape(-1, 384).std(axis=0).mean() > 0.1  # tokens differ across the image
