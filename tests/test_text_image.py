"""Text-image models from a local folder: CLIP's real tokenizer (its vocabulary from the open_clip_torch wheel),
a tiny random CLIP saved and loaded as a checkpoint folder, and its text encoder against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_tokenizer import CONTEXT, write_clip_tokenizer
from transformers import CLIPConfig, CLIPModel

from maskbank.tasks.clip_seed import TEMPLATES, text_embeddings
from maskbank.tasks.models.backbone import load_backbone
from maskbank.tasks.models.text_image import TextEncoder, load_tokenizer

SENTENCES = ["a photo of a cat.", "There is the traffic light in the scene!", "café 东京 don't", "potted plant"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = write_clip_tokenizer(tmp_path_factory.mktemp("clip"))
    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": CONTEXT, "eos_token_id": 49407,
                     "bos_token_id": 49406, "pad_token_id": 49407},
        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_the_tokenizer_is_clip_s(clip_folder):
    import open_clip

    tokenizer = load_tokenizer(clip_folder)
    reference = open_clip.tokenizer.SimpleTokenizer()
    for text in SENTENCES:
        ids = tokenizer(text)["input_ids"]
        assert ids == [49406, *reference.encode(text), 49407], text


def test_the_text_encoder_of_a_checkpoint_folder(clip_folder):
    import open_clip

    model = load_backbone(clip_folder)
    assert isinstance(model, CLIPModel)
    encode = TextEncoder(model, load_tokenizer(clip_folder), device="cpu")
    got = encode(SENTENCES)
    with torch.no_grad():  # open_clip pads with 0 after the end-of-text token; CLIP's causal mask ignores both
        out = model.get_text_features(input_ids=open_clip.tokenize(SENTENCES, context_length=CONTEXT))
    want = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert got.shape == (4, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    classes = text_embeddings(encode, ["cat", "potted plant"])
    assert classes.shape == (2, 8) and np.allclose(np.linalg.norm(classes, axis=1), 1, atol=1e-5)
    assert len(TEMPLATES) > 1


def test_a_folder_without_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path)
