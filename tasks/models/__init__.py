"""Model builders: SAM by name (``sam``), MobileSAM's size-aware TinyViT (``tiny_vit``), feature backbones
(``backbone``) and device/precision choice (``device``). Import the module you need; each pulls in only
its own dependencies."""
