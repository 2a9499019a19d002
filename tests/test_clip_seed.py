"""Seeds and image labels from text embeddings, on synthetic embeddings where the answer is known, and against a
proposal-by-proposal reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskbank.tasks.clip_seed import (
    DUST_BIN, TEMPLATES, ClipSeedConfig, clip_seed_labels, dust_bin, text_embeddings, zero_shot_image_labels,
)

DIM = 16
NAMES = ["background", "cat", "dog", "car"]


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _world(seed: int = 0):
    """Classes on axes 1-3, three background words on axes 4-6; eight images with 1-2 labels; each image
    has a proposal per label and a background proposal, plus (images 0-3) a car that is not labelled."""
    rng = np.random.default_rng(seed)
    axes = np.eye(DIM, dtype=np.float32)
    class_text, bin_text = axes[:4].copy(), axes[4:7]
    scenes = [(1,), (2,), (1, 2), (3,), (1, 3), (2, 3), (1, 2, 3), (2,)]
    labels = np.zeros((len(scenes), 4), bool)
    emb, index, truth = [], [], []
    for i, classes in enumerate(scenes):
        labels[i, list(classes)] = True
        parts = [(axes[c], c) for c in classes] + [(axes[4 + i % 3], 0)]
        if i < 4 and 3 not in classes:
            parts.append((axes[3], 0))  # an unlabelled car: not one of this image's classes
        for direction, t in parts:
            emb.append(direction + 0.1 * rng.standard_normal(DIM))
            index.append(i)
            truth.append(t)
    return _unit(np.array(emb, np.float32)), np.array(index), labels, np.array(truth), class_text, bin_text


def _reference(emb, index, labels, class_text, bin_text, background, config):
    out_l, out_s = [], []
    vocab = list(class_text[1:]) + list(bin_text)
    for e, i in zip(emb, index):
        logits = [config.temperature * float(e @ v) for v in vocab]
        z = sum(np.exp(x - max(logits)) for x in logits)
        prob = [np.exp(x - max(logits)) / z for x in logits]
        kept = {c: prob[c - 1] for c in range(1, len(class_text)) if labels[i, c]}
        if background:
            kept[0] = (1 - max(kept.values(), default=0.0)) ** config.background_power
        else:
            top = max((logits[c - 1] for c in kept), default=None)
            z = sum(np.exp(logits[c - 1] - top) for c in kept)
            kept = {c: np.exp(logits[c - 1] - top) / z for c in kept} if kept else {0: 1.0}
        best = max(sorted(kept), key=lambda c: kept[c])
        out_l.append(best)
        out_s.append(kept[best])
    return np.array(out_l), np.array(out_s, np.float32)


def test_seeds_recover_the_truth_and_keep_to_the_image_labels():
    emb, index, labels, truth, class_text, bin_text = _world()
    got, score = clip_seed_labels(emb, index, labels, class_text, bin_text)
    np.testing.assert_array_equal(got, truth)  # unlabelled cars and the stuff are background
    assert ((score > 0) & (score <= 1)).all()
    assert all(labels[i, c] for c, i in zip(got, index) if c)


def test_without_background_every_proposal_takes_one_of_its_image_labels():
    emb, index, labels, truth, class_text, bin_text = _world(1)
    got, score = clip_seed_labels(emb, index, labels, class_text, bin_text, background=False)
    assert all(labels[i, c] and c for c, i in zip(got, index))
    objects = truth > 0
    np.testing.assert_array_equal(got[objects], truth[objects])
    np.testing.assert_allclose(score.max(), 1.0, atol=1e-6)  # single-label images: certain


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("power", [0.5, 1.0, 3.0])
def test_seeds_equal_a_proposal_by_proposal_reference(background, power):
    emb, index, labels, _, class_text, bin_text = _world(2)
    config = ClipSeedConfig(temperature=50.0, background_power=power)
    got = clip_seed_labels(emb, index, labels, class_text, bin_text, background=background, config=config)
    want = _reference(emb, index, labels, class_text, bin_text, background, config)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


def test_the_dust_bin_leaves_out_the_dataset_s_classes():
    assert "grass" in DUST_BIN and "sky" in DUST_BIN
    words = dust_bin(["background", "Grass", "sky ", "cow"])
    assert "grass" not in words and "sky" not in words and "road" in words and len(words) == len(DUST_BIN) - 2


def test_text_embeddings_average_the_normalised_prompts():
    seen = []

    def encode(texts):
        seen.extend(texts)
        g = torch.Generator().manual_seed(len(texts[0]))
        return torch.randn(len(texts), DIM, generator=g) * torch.arange(1, len(texts) + 1)[:, None]

    out = text_embeddings(encode, ["cat", "traffic light"])
    assert out.shape == (2, DIM) and seen[: len(TEMPLATES)] == [t.format("cat") for t in TEMPLATES]
    e = encode([t.format("traffic light") for t in TEMPLATES]).numpy()
    np.testing.assert_allclose(out[1], _unit(_unit(e).mean(0)), rtol=1e-5)
    with pytest.raises(ValueError, match="templates"):
        text_embeddings(encode, ["cat"], templates=())


def test_zero_shot_image_labels_from_the_proposals():
    """Every image of the world unlabelled: the classes its proposals are taken for are its labels (the
    unlabelled cars of images 0-3 included, being there); by threshold or top-k."""
    from maskbank.tasks.clip_seed import image_class_scores

    emb, index, labels, truth, class_text, bin_text = _world(3)
    scores = image_class_scores(emb, index, len(labels), class_text, bin_text)
    assert scores.shape == labels.shape and not scores[:, 0].any()
    present = [sorted({int(t) for t, i in zip(truth, index) if i == img and t} | ({3} if img < 4 else set()))
               for img in range(len(labels))]
    assert zero_shot_image_labels(scores, threshold=0.5) == present
    top1 = zero_shot_image_labels(scores, top_k=1)
    assert all(len(t) == 1 and t[0] in p for t, p in zip(top1, present))
    assert all(len(t) == 3 for t in zero_shot_image_labels(scores, top_k=3))
    assert zero_shot_image_labels(np.zeros((1, 4)), threshold=0.5) == [[1]]  # at least the best class
    with pytest.raises(ValueError, match="exactly one"):
        zero_shot_image_labels(scores)
    with pytest.raises(ValueError, match="top_k"):
        zero_shot_image_labels(scores, top_k=0)


def test_the_seed_method_s_settings_act_or_are_refused():
    from pydantic import ValidationError

    from maskbank.flows.params import SeedParams

    clip = SeedParams(method="clip", text_model="clip_l14", background_power=2.0)
    assert clip.clip_config().background_power == 2.0 and clip.text_model == "clip_l14"
    with pytest.raises(ValidationError, match="rounds, claim_labels would have no effect: seed.method is 'clip'"):
        SeedParams(method="clip", rounds=2, claim_labels=False)
    with pytest.raises(ValidationError, match="text_model, background_power would have no effect: seed.method is 'labels'"):
        SeedParams(text_model="clip_l14", background_power=2.0)
    with pytest.raises(ValidationError, match="text_model must be one of clip_b16, clip_l14, not 'siglip_b16'"):
        SeedParams(method="clip", text_model="siglip_b16")
    with pytest.raises(ValidationError, match="'dinov2_s' is not a text-image checkpoint"):
        SeedParams(method="clip", text_model="dinov2_s")
    assert SeedParams(rounds=2).config().rounds == 2
    assert SeedParams(method="clip", zero_shot_labels="threshold", zero_shot_threshold=0.3).zero_shot_threshold == 0.3
    with pytest.raises(ValidationError, match="zero_shot_top_k would have no effect: seed.zero_shot_labels is 'threshold'"):
        SeedParams(method="clip", zero_shot_labels="threshold", zero_shot_top_k=3)
    with pytest.raises(ValidationError, match="zero_shot_labels would have no effect: seed.method is 'labels'"):
        SeedParams(zero_shot_labels="top_k")
