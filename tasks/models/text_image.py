"""Text-image models (CLIP, SigLIP) saved as a local ``transformers`` folder: the tokenizer beside the model, and
the text side as one callable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from maskbank.tasks.models.device import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_tokenizer(folder: Path | str) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model folder; never reaches a model hub."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"no tokenizer (tokenizer_config.json) in the model folder {folder}")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


class TextEncoder:
    """Texts to ``[n, D]`` embeddings in the image embeddings' space of a ``CLIPModel`` or ``SiglipModel``.
    Texts are padded to the model's full context (SigLIP was trained so; CLIP pools at its end-of-text token,
    which its padding repeats) and cut to it."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.context = int(model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context,
                                return_tensors="pt")
        out = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device))
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float().cpu()
