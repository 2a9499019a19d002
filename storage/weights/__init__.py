"""Model weights: a registry of pinned checkpoints and a verified, atomic, lock-protected local cache.

    from maskbank.storage.weights import fetch
    sam_file = fetch("mobile_sam")        # file checkpoints return the file
    dinov2_dir = fetch("dinov2_s")        # folder checkpoints return a transformers folder

Environment: ``MASKBANK_CACHE_DIR`` (cache root, default ``<user cache dir>/maskbank/weights``) and
``MASKBANK_OFFLINE=1`` (use the cache only).
"""

from maskbank.storage.weights.cache import weights_cache_dir
from maskbank.storage.weights.errors import WeightsError
from maskbank.storage.weights.fetch import cached, fetch, offline_mode
from maskbank.storage.weights.registry import (
    DEFAULT_BACKBONE,
    DEFAULT_PROPOSER,
    REGISTRY,
    Checkpoint,
    Source,
    get_checkpoint,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_PROPOSER",
    "REGISTRY",
    "Checkpoint",
    "Source",
    "WeightsError",
    "cached",
    "fetch",
    "get_checkpoint",
    "offline_mode",
    "weights_cache_dir",
]
