"""Tiny randomly initialised open-vocabulary detectors for tests (no download): a ``transformers`` Grounding DINO
with a small BERT word-piece vocabulary, and an OWLv2 with CLIP's real tokenizer."""

from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "cat", "dog", "car", "traffic", "light", "person"]


def tiny_grounding_dino(folder: Path):
    """``(model, processor)``: a Grounding DINO of a two-stage Swin, 32-wide BERT and 12 queries reading at most
    32 text tokens; words outside :data:`WORDS` are ``[UNK]``."""
    import torch
    from transformers import (
        BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
        GroundingDinoProcessor, SwinConfig,
    )

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=4, image_size=64,
                                   out_features=["stage1", "stage2"]),
        text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                               vocab_size=len(WORDS)),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12, num_feature_levels=2, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, use_timm_backbone=False, use_pretrained_backbone=False)
    torch.manual_seed(0)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizer(str(vocab)))
    return GroundingDinoForObjectDetection(config).eval(), processor


def tiny_owlv2(folder: Path):
    """``(model, processor)``: an OWLv2 of 16-wide one-block towers on 64-pixel images, with CLIP's tokenizer."""
    import torch
    from clip_tokenizer import write_clip_tokenizer
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder), model_max_length=16)
    config = Owlv2Config(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 16},
        projection_dim=16)
    torch.manual_seed(0)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    return Owlv2ForObjectDetection(config).eval(), processor
