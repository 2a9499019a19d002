"""Typed parameters of every stage: what the Prefect UI shows as the run form, with defaults and help.

Defaults follow ModuSeg where it transfers; each departure is named in its field's description.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProposeParams(_Params):
    """Segment Anything automatic mask generation."""

    model: str = Field("mobile_sam", description="Checkpoint name from `maskbank weights list` (mobile_sam, sam_vit_b, sam_vit_l, sam_vit_h).")
    input_size: int = Field(1024, description="SAM encoder input side: 1024 native; 512 (vit_t only) is about 4x faster but leaves about half the pixels outside every proposal (BENCHMARKS.md).")
    points_per_side: int = Field(16, ge=1, description="Point prompts per image side.")
    points_per_batch: int = Field(16, ge=1, description="Prompts decoded at once (16 keeps the decoder in CPU cache; raise it on a GPU).")
    pred_iou_thresh: float = Field(0.88, ge=0, le=1, description="Keep masks whose predicted IoU is at least this.")
    stability_score_thresh: float = Field(0.95, ge=0, le=1, description="Keep masks whose stability score is at least this.")
    box_nms_thresh: float = Field(0.7, ge=0, le=1, description="Box NMS threshold between masks.")
    min_area: float = Field(0.0016, ge=0, lt=1, description="Smallest non-overlapping region kept, as a fraction of the image (ModuSeg: 300 px at 500x375).")
    bf16: bool = Field(True, description="bfloat16 autocast (CPU and CUDA).")
    generator: Literal["fast", "stock"] = Field("fast", description="'fast': decodes prompts and filters at low resolution before upsampling survivors; 'stock': Meta's SamAutomaticMaskGenerator.")


class EmbedParams(_Params):
    """Dense patch features of a frozen backbone."""

    model: str = Field("dinov2_s", description="Backbone checkpoint name (dinov2_s, facebook/dinov2-small, hf:<repo>).")
    layer: int = Field(10, description="Hidden state used (10 of 12 is this DINOv2-S's best block; negative counts from the end).")
    long_side: int = Field(448, ge=14, description="Image long side fed to the backbone, in pixels.")
    saliency: bool = Field(True, description="Also store the backbone's foreground-saliency map, when the checkpoint has a saliency head.")


class SeedParams(_Params):
    """Seed labels of labelled images from image-level labels and features alone (see ``tasks/seed.py``)."""

    quantile: float = Field(0.75, ge=0, le=1, description="Quantile of a proposal's best matches in images without a class that its evidence is measured against.")
    contrast_scale: float = Field(0.1, gt=0, description="Cosine contrast worth one unit of score.")
    background_bias: float = Field(0.5, description="Score of background: the evidence a class needs to claim a proposal.")
    saliency_weight: float = Field(1.0, ge=0, description="Weight of the saliency foreground prior (0 = off).")
    rounds: int = Field(2, ge=0, description="Refinement rounds against the other images' seeds.")
    claim_labels: bool = Field(True, description="Make every image label claim at least one proposal (an image label says the class is there; turn off with coarse proposals, where small labelled objects have no proposal of their own).")

    def config(self) -> "SeedConfig":
        from maskbank.tasks.seed import SeedConfig

        return SeedConfig(**self.model_dump())


class BankParams(_Params):
    """Prototype bank (ModuSeg stage C, E-G)."""

    erosion: Literal["scaled", "fixed"] = Field("scaled", description="'fixed': ModuSeg's 3x3 kernel x `max_iterations`; 'scaled': iterations grow with object size (ModuSeg's fixed 20 erase most COCO objects).")
    erosion_fraction: float = Field(0.25, ge=0, description="Scaled erosion: iterations = fraction x equivalent radius of the region.")
    max_iterations: int = Field(20, ge=0, description="Erosion iterations cap (ModuSeg: 20).")
    min_area: float = Field(0.0016, ge=0, lt=1, description="Smallest purified region kept, fraction of the image (ModuSeg: 300 px).")
    filter_ratio: float = Field(0.25, ge=0, lt=1, description="Share of each foreground class's prototypes farthest from its mean dropped (ModuSeg: 0.25).")


class RetrieveParams(_Params):
    """k-NN retrieval of proposal labels against the bank."""

    rule: Literal["class_balanced", "majority", "knn_weighted"] = Field("class_balanced", description="'majority' is ModuSeg's vote, which collapses on small banks where background prototypes outnumber every class.")
    k: int = Field(25, ge=1, description="Neighbours of the 'majority' and 'knn_weighted' rules (ModuSeg: 25).")
    k_per_class: int = Field(5, ge=1, description="Prototypes averaged per class by 'class_balanced'.")
    nms_iou: float = Field(0.4, ge=0, le=1, description="Per-class mask NMS before painting (ModuSeg: 0.4).")


class RunParams(_Params):
    """Everything one run of the main flow takes besides the data."""

    propose: ProposeParams = ProposeParams()
    embed: EmbedParams = EmbedParams()
    seed: SeedParams = SeedParams()
    bank: BankParams = BankParams()
    retrieve: RetrieveParams = RetrieveParams()
    shard_size: int = Field(8, ge=1, description="Images per cached task.")
