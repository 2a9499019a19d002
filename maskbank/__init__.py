"""maskbank: pixel-level labels from image-level labels, without training."""

__version__ = "0.1.0"
