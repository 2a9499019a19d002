"""The fast mask generator against Meta's: same decoder outputs, same upsampled logits, same masks."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator

from maskbank.tasks.fast_amg import FastMaskGenerator
from maskbank.tasks.models.sam import assemble_sam
from maskbank.tasks.models.tiny_vit import tiny_vit
from maskbank.tasks.point_decoder import PointDecoder
from maskbank.tasks.propose import MaskProposer, ProposerConfig, _Generator

SIZE = 64
TINY = dict(embed_dims=(8, 16, 32, 320), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "maskbank/sample/coco/train2017/000000196610.jpg"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_sam():
    """Random weights; larger hypernetwork outputs give mask logits beyond +-1, so stability scores spread."""
    torch.manual_seed(0)
    sam = assemble_sam(tiny_vit(SIZE, **TINY), SIZE)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30)
    return sam.eval()


def _image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(h * 1000 + w)
    img = np.full((h, w, 3), 30, np.uint8)
    img[h // 8 : h // 2, w // 8 : 5 * w // 8] = (220, 40, 40)
    img[h // 2 :, w // 3 :] = (40, 200, 60)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


def _stock_decoder(sam, embedding, points):
    labels = torch.ones(len(points), 1, dtype=torch.int)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(points[:, None], labels), boxes=None, masks=None)
        return sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)


def test_point_decoder_matches_mask_decoder(tiny_sam):
    torch.manual_seed(1)
    embedding = torch.randn(1, 256, SIZE // 16, SIZE // 16)
    points = torch.rand(9, 2) * SIZE
    masks, iou = _stock_decoder(tiny_sam, embedding, points)
    decoder = PointDecoder(tiny_sam)
    decoder.set_image(embedding)
    decoded = decoder.decode(points)
    assert len(decoded) == 9
    torch.testing.assert_close(decoder.iou(decoded), iou, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoder.masks(decoded, torch.arange(9)), masks, atol=1e-4, rtol=1e-4)
    keep = torch.tensor([False, True, False, False, True, True, False, False, False])
    torch.testing.assert_close(decoder.masks(decoded, keep), masks[keep], atol=1e-4, rtol=1e-4)
    assert decoder.masks(decoded, torch.zeros(9, dtype=torch.bool)).shape == (0, 3, SIZE // 4, SIZE // 4)
    # bf16 copy: the model's own weights stay float32
    half = PointDecoder(tiny_sam, torch.bfloat16)
    half.set_image(embedding)
    assert tiny_sam.mask_decoder.iou_token.weight.dtype == torch.float32
    half_decoded = half.decode(points)
    torch.testing.assert_close(half.iou(half_decoded), iou, atol=0.05, rtol=0.05)
    assert half.masks(half_decoded, torch.arange(9)).dtype == torch.bfloat16


def test_point_decoder_rejects_bad_calls(tiny_sam):
    decoder = PointDecoder(tiny_sam)
    with pytest.raises(RuntimeError, match="set_image"):
        decoder.decode(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\[1, C, h, w\]"):
        decoder.set_image(torch.zeros(2, 256, 4, 4))
    with pytest.raises(ValueError, match="grid"):
        decoder.set_image(torch.zeros(1, 256, 8, 8))
    decoder.set_image(torch.zeros(1, 256, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        decoder.decode(torch.zeros(3, 1, 2))


@pytest.mark.parametrize("hw", [(48, 64), (64, 23), (300, 17), (5, 3)])
def test_upsampled_equals_postprocess_masks(tiny_sam, hw):
    generator = FastMaskGenerator(tiny_sam)
    generator.predictor.set_image(_image(*hw))
    low_res = torch.randn(5, SIZE // 4, SIZE // 4) * 4
    reference = tiny_sam.postprocess_masks(low_res[:, None], generator.predictor.input_size, hw)[:, 0]
    chunks = list(generator._upsampled(low_res, hw))
    assert torch.equal(torch.cat(chunks), reference)
    assert len(list(generator._upsampled(low_res[:0], hw))) == 1


def _assert_same_records(fast: list[dict], stock: list[dict]) -> None:
    """Same masks, boxes, areas and prompts; scores equal to float rounding."""
    def by_mask(records):
        return {(r["segmentation"]["counts"], tuple(r["point_coords"][0])): r for r in records}

    fast_by, stock_by = by_mask(fast), by_mask(stock)
    assert len(fast_by) == len(fast) and fast_by.keys() == stock_by.keys()
    for key, r in stock_by.items():
        f = fast_by[key]
        assert (f["bbox"], f["area"], f["crop_box"]) == (r["bbox"], r["area"], r["crop_box"])
        assert f["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-5)
        assert f["stability_score"] == pytest.approx(r["stability_score"], abs=1e-5)


# Random weights predict IoU in about [-0.25, 0.75] and stability in [0.5, 0.93]: these thresholds cut both.
STRICT = dict(pred_iou_thresh=0.2, stability_score_thresh=0.75, box_nms_thresh=0.7)
SETTINGS = [
    dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    STRICT,
    dict(STRICT, crop_n_layers=1),
    dict(STRICT, min_mask_region_area=20),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("hw", [(64, 64), (40, 64), (70, 23)])
def test_fast_generator_gives_the_stock_masks(tiny_sam, settings, hw):
    kwargs = dict(points_per_side=6, points_per_batch=10, output_mode="coco_rle", **settings)
    image = _image(*hw)
    stock = SamAutomaticMaskGenerator(tiny_sam, **kwargs).generate(image)
    fast = FastMaskGenerator(tiny_sam, **kwargs).generate(image)
    assert 0 < len(stock) < 108 or settings["box_nms_thresh"] == 1.0
    _assert_same_records(fast, stock)


def test_proposer_picks_the_generator(tiny_sam):
    loose = dict(input_size=SIZE, points_per_side=6, device="cpu", **STRICT)
    assert ProposerConfig().generator == "fast"
    fast = MaskProposer(tiny_sam, ProposerConfig(bf16=False, **loose))
    stock = MaskProposer(tiny_sam, ProposerConfig(bf16=False, generator="stock", **loose))
    assert type(fast.generator) is FastMaskGenerator and type(stock.generator) is _Generator
    image = _image(64, 48)
    a, b = fast(image), stock(image)
    assert len(a) > 0 and a.rles == b.rles
    np.testing.assert_allclose(a.predicted_iou, b.predicted_iou, atol=1e-5)
    with pytest.raises(ValueError, match="generator"):
        ProposerConfig(generator="turbo")


@pytest.mark.real
def test_real_model_fast_matches_stock():
    """MobileSAM on one photo at 8x8 prompts: the same masks in float32, nearly the same in bf16."""
    from maskbank.storage.weights import fetch

    image = cv2.cvtColor(cv2.imread(str(SAMPLE_IMAGE)), cv2.COLOR_BGR2RGB)
    config = dict(input_size=512, points_per_side=8, device="cpu")
    sam = MaskProposer.from_checkpoint(fetch("mobile_sam"), ProposerConfig(**config)).sam
    stock = MaskProposer(sam, ProposerConfig(generator="stock", bf16=False, **config))(image)
    fast = MaskProposer(sam, ProposerConfig(generator="fast", bf16=False, **config))(image)
    assert len(stock) >= 3
    assert fast.rles == stock.rles
    np.testing.assert_allclose(fast.stability_score, stock.stability_score, atol=1e-6)
    half = MaskProposer(sam, ProposerConfig(**config))(image)
    iou = mask_utils.iou(stock.rles, half.rles, [0] * len(half))
    assert (iou.max(axis=1) >= 0.8).mean() >= 0.75
