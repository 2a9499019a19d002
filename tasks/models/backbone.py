"""Dense feature backbones: a ``transformers`` model saved as a local folder."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, PreTrainedModel


def load_backbone(path_or_folder: Path | str) -> PreTrainedModel:
    """Load the ``transformers`` model saved in a local folder (``config.json`` + weights), in float32,
    in eval mode, with frozen parameters. Never reaches a model hub."""
    folder = Path(path_or_folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no transformers model folder (config.json) at {folder}")
    model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model
