"""Typed parameters of every stage: what the Prefect UI shows as the run form, with defaults and help.

Defaults follow ModuSeg where it transfers; each departure is named in its field's description.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from maskbank.tasks.clip_masks import ClipMaskConfig
from maskbank.tasks.clip_seed import ClipSeedConfig
from maskbank.tasks.detect import DetectConfig
from maskbank.tasks.embed import EmbedConfig
from maskbank.tasks.propose import ProposerConfig
from maskbank.tasks.purify import MIN_AREA_FRACTION
from maskbank.tasks.retrieve import DEFAULT_K
from maskbank.tasks.seed import SeedConfig
from maskbank.tasks.segmenter import SegmenterConfig

_SEED = SeedConfig()
_CLIP_MASKS = ClipMaskConfig()
_CLIP_SEED = ClipSeedConfig()
_DETECT = DetectConfig()
_SEGMENTER = SegmenterConfig()


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SAM_INPUT_SIZES = {"vit_t": (1024, 512), "vit_b": (1024,), "vit_l": (1024,), "vit_h": (1024,)}
"""Encoder input sides each SAM architecture takes (TinyViT's windows also fit 512; ViT's position
embeddings are for 1024)."""


def _checkpoint_role(name: str, roles, what: str) -> str:
    """The role of checkpoint ``name`` in the weights registry; a ValueError unless it is one of ``roles``."""
    from maskbank.storage.weights import WeightsError, get_checkpoint

    try:
        role = get_checkpoint(name).role
    except WeightsError as e:
        raise ValueError(str(e)) from None
    if role not in roles:
        raise ValueError(f"{name!r} is not {what} (it is a {role} checkpoint)")
    return role


def _checkpoint_name(roles: tuple[str, ...], what: str):
    """The type of a setting that names a checkpoint of the weights registry with one of ``roles``."""
    def check(name: str) -> str:
        _checkpoint_role(name, roles, what)
        return name

    return Annotated[str, AfterValidator(check)]


SamCheckpoint = _checkpoint_name(tuple(SAM_INPUT_SIZES), "a Segment Anything checkpoint")
BackboneCheckpoint = _checkpoint_name(("backbone",), "a backbone checkpoint")
TextImageCheckpoint = _checkpoint_name(("text_image",), "a text-image checkpoint")
DetectorCheckpoint = _checkpoint_name(("detector",), "a detector checkpoint")


class ProposeParams(_Params):
    """Class-agnostic proposals from Segment Anything's automatic mask generation (``automatic``), or SAM's masks
    in the boxes an open-vocabulary detector finds for the class names (``boxes``, see ``tasks/detect.py``)."""

    method: Literal["automatic", "boxes"] = Field("automatic", description="'automatic': SAM's masks from a grid of point prompts, class-agnostic; 'boxes': the detector's boxes for the dataset's class names, SAM's mask in each, each with its box's class (the pixels in no box are one more region where the classes have a background); seed.method 'boxes' labels them by those classes. No quality figure measured here.")
    model: SamCheckpoint = Field("mobile_sam", description="Checkpoint name from `maskbank weights list` (mobile_sam, sam_vit_b, sam_vit_l, sam_vit_h).")
    input_size: int = Field(ProposerConfig.input_size, description="SAM encoder input side: 1024 native; 512 (vit_t only) is about 4x faster but leaves about half the pixels outside every proposal (BENCHMARKS.md).")
    points_per_side: int = Field(ProposerConfig.points_per_side, ge=1, description="Point prompts per image side.")
    points_per_batch: int | None = Field(ProposerConfig.points_per_batch, ge=1, description="Prompts decoded at once; unset: 16 on a CPU (keeps the decoder in cache), 256 on CUDA.")
    pred_iou_thresh: float = Field(ProposerConfig.pred_iou_thresh, ge=0, le=1, description="Keep masks whose predicted IoU is at least this.")
    stability_score_thresh: float = Field(ProposerConfig.stability_score_thresh, ge=0, le=1, description="Keep masks whose stability score is at least this.")
    box_nms_thresh: float = Field(ProposerConfig.box_nms_thresh, ge=0, le=1, description="Box NMS threshold between masks.")
    min_area: float = Field(ProposerConfig.min_area, ge=0, lt=1, description="Smallest non-overlapping region kept, as a fraction of the image (ModuSeg: 300 px at 500x375).")
    bf16: bool = Field(ProposerConfig.bf16, description="bfloat16 autocast (CPU and CUDA).")
    generator: Literal["fast", "stock"] = Field(ProposerConfig.generator, description="'fast': decodes prompts and filters at low resolution before upsampling survivors; 'stock': Meta's SamAutomaticMaskGenerator.")
    detector: DetectorCheckpoint = Field("grounding_dino_t", description="With method 'boxes': the open-vocabulary detector (grounding_dino_t, grounding_dino_b, owlv2_b16; `maskbank weights list`).")
    box_threshold: float = Field(_DETECT.box_threshold, ge=0, le=1, description="With method 'boxes': boxes whose best class scores at least this are kept (Grounding DINO's published default).")
    text_threshold: float = Field(_DETECT.text_threshold, ge=0, le=1, description="With method 'boxes' and a Grounding DINO detector: a class's name tokens must score at least this for its box to take it.")
    detection_nms_iou: float = Field(_DETECT.nms_iou, ge=0, le=1, description="With method 'boxes': class-wise NMS between the detector's boxes.")

    @model_validator(mode="after")
    def _settings_act(self) -> "ProposeParams":
        why = "the automatic mask generator's" if self.method == "boxes" else "the detector's"
        _refuse_unused(self, True, f"propose.method is '{self.method}' (they are {why} settings)",
                       tuple(n for n in type(self).model_fields if n not in self._other_method_settings()))
        if self.method == "boxes" and not self.detector.startswith("grounding_dino"):
            _refuse_unused(self, True, f"{self.detector} scores each class on its own (no text tokens)",
                           tuple(n for n in type(self).model_fields if n != "text_threshold"))
        return self

    def acting(self) -> dict:
        """The settings that act with this method (what the proposals' key hashes)."""
        return self.model_dump(mode="json", exclude=set(self._other_method_settings()))

    def _other_method_settings(self) -> tuple[str, ...]:
        """The settings of the method not chosen, which have no effect."""
        return AUTOMATIC_ONLY if self.method == "boxes" else BOX_ONLY

    def detect_config(self, device: str = "auto") -> DetectConfig:
        """The detector's settings, with method 'boxes'."""
        return DetectConfig(box_threshold=self.box_threshold, text_threshold=self.text_threshold,
                            nms_iou=self.detection_nms_iou, device=device)

    @field_validator("input_size")
    @classmethod
    def _a_size_the_encoder_takes(cls, size: int, info: ValidationInfo) -> int:
        model = info.data.get("model")
        if model is not None:  # else the model itself was refused
            sizes = SAM_INPUT_SIZES[_checkpoint_role(model, SAM_INPUT_SIZES, "")]
            if size not in sizes:
                raise ValueError(f"{model}'s encoder takes {' or '.join(str(s) for s in sizes)}")
        return size


BOX_ONLY = ("detector", "box_threshold", "text_threshold", "detection_nms_iou")
"""Settings of ProposeParams that act with method 'boxes' alone."""
AUTOMATIC_ONLY = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                  "box_nms_thresh", "generator")
"""Settings of ProposeParams that act with method 'automatic' alone."""

class EmbedParams(_Params):
    """Dense patch features of a frozen backbone."""

    model: BackboneCheckpoint = Field("dinov2_s", description="Backbone checkpoint name (dinov2_s, facebook/dinov2-small, hf:<repo>).")
    layer: int = Field(EmbedConfig.layer, description="Hidden state used (10 of 12 is this DINOv2-S's best block; negative counts from the end).")
    long_side: int = Field(EmbedConfig.long_side, ge=14, description="Image long side fed to the backbone, in pixels.")
    saliency: bool = Field(True, description="Also store the backbone's foreground-saliency map, when the checkpoint has a saliency head.")
    bf16: bool = Field(EmbedConfig.bf16, description="bfloat16 autocast of the backbone (faster on a GPU; features at bfloat16 precision).")


class PoolParams(_Params):
    """One feature per proposal, soft-pooled over the cells its mask covers (see ``tasks/pooling.py``)."""

    mask_attention: bool = Field(True, description="Make each image's features again with each proposal's tokens attending to their own proposal alone in the feature block (TUSS's mask-aware attention bias, see ``tasks/mask_attention.py``), so a proposal's feature comes from its own region: a boat's is not its water's. One more pass of the backbone up to that block per image; it lifts MSRC-21's pseudo-labels from 0.674 to 0.763 mIoU (BENCHMARKS.md, \"Mask-aware attention\").")
    attention_bias: float = Field(-10.0, lt=0, description="Logit bias between tokens that share no proposal, with mask_attention (TUSS: -4; on MSRC-21 -4 gains little over none, and -10 as much as -100: the proposals are shut off from each other).")

    @model_validator(mode="after")
    def _settings_act(self) -> "PoolParams":
        _refuse_unused(self, not self.mask_attention, "pool.mask_attention is false", ("mask_attention",))
        return self


class SeedParams(_Params):
    """Seed labels of labelled images: from image-level labels and cross-image evidence alone (``labels``,
    see ``tasks/seed.py``), from a text-image model's view of each proposal (``clip``, see
    ``tasks/clip_masks.py`` and ``tasks/clip_seed.py``), or from the classes of the detector's boxes the
    proposals were made in (``boxes``, see ``tasks/box_seed.py``)."""

    method: Literal["labels", "clip", "boxes"] = Field("labels", description="'labels': from the image labels and the other images' evidence (no model hub needed); 'clip': each proposal embedded by a CLIP image encoder with TUSS's mask-aware last block and classified against the text embeddings of the class names (and a dust bin of stuff words), restricted to the image's labels; 'boxes' (with propose.method 'boxes'): each proposal takes its box's class where the image is labelled with it, the pixels in no box are background. No quality figure measured here for 'clip' or 'boxes'.")
    text_model: TextImageCheckpoint = Field("clip_b16", description="With method 'clip': the CLIP checkpoint (clip_b16, clip_l14; `maskbank weights list`).")
    clip_attention_bias: float = Field(_CLIP_MASKS.bias, le=0, description="With method 'clip': logit bias in CLIP's last block between tokens of different proposals (TUSS: -4).")
    background_power: float = Field(_CLIP_SEED.background_power, gt=0, description="With method 'clip' and a background class: background scores (1 - best kept class probability) to this power (TUSS tunes it in 0.2-5; 1: a class needs half the probability).")
    zero_shot_labels: Literal["off", "top_k", "threshold"] = Field("off", description="With method 'clip': images of the labelled datasets that have no image labels get, before seeding, the classes their proposals are taken for: the zero_shot_top_k best ('top_k') or those scoring at least zero_shot_threshold ('threshold'), so a folder without labels can be labelled; 'off': such images are left out.")
    zero_shot_top_k: int = Field(1, ge=1, description="With zero_shot_labels 'top_k': classes each unlabelled image gets.")
    zero_shot_threshold: float = Field(0.5, gt=0, le=1, description="With zero_shot_labels 'threshold': the probability one of an image's proposals must give a class (the best class is kept whatever its score).")

    quantile: float = Field(_SEED.quantile, ge=0, le=1, description="Quantile of a proposal's best matches in images without a class that its evidence is measured against.")
    contrast_scale: float = Field(_SEED.contrast_scale, gt=0, description="Cosine contrast worth one unit of score.")
    background_bias: float = Field(_SEED.background_bias, description="Score of background: the evidence a class needs to claim a proposal.")
    saliency_weight: float = Field(_SEED.saliency_weight, ge=0, description="Weight of the saliency foreground prior (0 = off).")
    rounds: int = Field(_SEED.rounds, ge=0, description="Refinement rounds against the other images' seeds.")
    claim_labels: bool = Field(_SEED.claim_labels, description="Make every image label claim at least one proposal (an image label says the class is there; turn off with coarse proposals, where small labelled objects have no proposal of their own).")
    evidence_per_class: int = Field(_SEED.evidence_per_class, ge=1, description="Images labelled with a class that a proposal is compared with (the first by content key); beyond it seeding samples, so memory and time stay linear in the collection.")
    reference_images: int = Field(_SEED.reference_images, ge=1, description="Images of the reference sample (the first by content key) that a proposal's matches in images without a class are measured over.")

    @model_validator(mode="after")
    def _settings_act(self) -> "SeedParams":
        clip_only = ("text_model", "clip_attention_bias", "background_power", "zero_shot_labels", "zero_shot_top_k",
                     "zero_shot_threshold")
        _refuse_unused(self, self.zero_shot_labels != "top_k", f"seed.zero_shot_labels is '{self.zero_shot_labels}'",
                       tuple(n for n in type(self).model_fields if n != "zero_shot_top_k"))
        _refuse_unused(self, self.zero_shot_labels != "threshold", f"seed.zero_shot_labels is '{self.zero_shot_labels}'",
                       tuple(n for n in type(self).model_fields if n != "zero_shot_threshold"))
        if self.method == "clip":
            _refuse_unused(self, True, "seed.method is 'clip'", ("method", *clip_only))
            from maskbank.storage.weights.registry import CLIP_CHECKPOINTS

            if self.text_model not in CLIP_CHECKPOINTS:
                raise ValueError(f"seed.method 'clip' embeds the proposals with a CLIP image encoder: text_model "
                                 f"must be one of {', '.join(CLIP_CHECKPOINTS)}, not {self.text_model!r}")
        elif self.method == "boxes":
            _refuse_unused(self, True, "seed.method is 'boxes' (the boxes' classes are the seeds)", ("method",))
        else:
            _refuse_unused(self, True, "seed.method is 'labels'", tuple(n for n in type(self).model_fields
                                                                        if n not in clip_only))
        return self

    def config(self, background: bool = True) -> SeedConfig:
        """The label-only seeding settings; ``background``: whether the collection's class list has a background
        class (a property of the datasets, not a seeding parameter)."""
        own = {name: getattr(self, name) for name in type(self).model_fields if name in SeedConfig.__dataclass_fields__}
        return SeedConfig(**own, background=background)

    def clip_config(self) -> ClipSeedConfig:
        """The settings of seeding from text embeddings."""
        return ClipSeedConfig(background_power=self.background_power)


class SegmentParams(_Params):
    """The second stage: a linear head on the patch features trained on the seeds (see ``tasks/segmenter.py``)."""

    enabled: bool = Field(True, description="Train the head and fill the pixels no proposal covers with its labels (restricted to each image's labels); off: the pseudo-labels are the seeds.")
    epochs: int = Field(_SEGMENTER.epochs, ge=1, description="Passes over the token sample.")
    learning_rate: float = Field(_SEGMENTER.learning_rate, gt=0, description="Peak learning rate (AdamW, one-cycle schedule).")
    weight_decay: float = Field(_SEGMENTER.weight_decay, ge=0, description="AdamW weight decay.")
    arbitrate_below: float = Field(0.0, ge=0, le=1, description="Seeds whose confidence is below this take the head's label instead (its class of highest mean probability over the proposal, among the image's labels); 0: the head only fills (arbitrating helps MSRC-21 a little and hurts coco-tiny: BENCHMARKS.md, \"Second stage\").")
    max_tokens: int = Field(_SEGMENTER.max_tokens, ge=1, description="Patch tokens the head is trained on at most: a uniform sample of the labelled images' covered tokens, so memory and training time stay bounded however many images are labelled.")

    @model_validator(mode="after")
    def _settings_act(self) -> "SegmentParams":
        _refuse_unused(self, not self.enabled, "segment.enabled is false", ("enabled",))
        return self

    def config(self) -> SegmenterConfig:
        """The training settings."""
        return SegmenterConfig(epochs=self.epochs, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                               max_tokens=self.max_tokens)


class BankParams(_Params):
    """Prototype bank (ModuSeg stage C, E-G)."""

    erosion: Literal["scaled", "fixed"] = Field("scaled", description="'fixed': ModuSeg's 3x3 kernel x `max_iterations`; 'scaled': iterations grow with object size (ModuSeg's fixed 20 erase most COCO objects).")
    erosion_fraction: float = Field(0.25, ge=0, description="Scaled erosion: iterations = fraction x equivalent radius of the region.")
    max_iterations: int = Field(20, ge=0, description="Erosion iterations cap (ModuSeg: 20).")
    min_area: float = Field(MIN_AREA_FRACTION, ge=0, lt=1, description="Smallest purified region kept, fraction of the image (ModuSeg: 300 px).")
    filter_ratio: float = Field(0.25, ge=0, lt=1, description="Share of each foreground class's prototypes farthest from its mean dropped (ModuSeg: 0.25).")
    max_prototypes_per_class: int = Field(4096, ge=1, description="Prototypes a class gathers (images in content-key order) before the outlier filter; beyond it the class takes no more, so the bank and retrieval time stay bounded however many images are labelled.")


class RetrieveParams(_Params):
    """How the images to label are labelled: k-NN retrieval of proposal labels against the bank, or the head."""

    method: Literal["bank", "segmenter"] = Field("bank", description="'bank': each proposal by k-NN over the prototype bank; 'segmenter': by the second stage's head (each proposal takes its class of highest mean probability, pixels outside every proposal the head's class); needs segment.enabled.")

    rule: Literal["class_balanced", "majority", "knn_weighted"] = Field("class_balanced", description="'majority' is ModuSeg's vote, which collapses on small banks where background prototypes outnumber every class.")
    k: int = Field(DEFAULT_K["majority"], ge=1, description="Neighbours of the 'majority' and 'knn_weighted' rules (ModuSeg: 25).")
    k_per_class: int = Field(DEFAULT_K["class_balanced"], ge=1, description="Prototypes averaged per class by 'class_balanced'.")
    nms_iou: float = Field(0.4, ge=0, le=1, description="Per-class mask NMS before painting (ModuSeg: 0.4).")

    @model_validator(mode="after")
    def _settings_act(self) -> "RetrieveParams":
        _refuse_unused(self, self.method == "segmenter", "retrieve.method is 'segmenter' (they set the bank's "
                       "retrieval)", ("method",))
        return self


def _refuse_unused(params: _Params, unused: bool, why: str, keep: tuple[str, ...]) -> None:
    """A ValueError naming the fields of ``params`` (but ``keep``) set away from their defaults while ``unused``
    says they have no effect, so that no setting is silently ignored."""
    if not unused:
        return
    changed = [name for name, f in type(params).model_fields.items()
               if name not in keep and getattr(params, name) != f.default]
    if changed:
        raise ValueError(f"{', '.join(changed)} would have no effect: {why}")


class RunParams(_Params):
    """Everything one run of the main flow takes besides the data."""

    propose: ProposeParams = ProposeParams()
    embed: EmbedParams = EmbedParams()
    pool: PoolParams = PoolParams()
    seed: SeedParams = SeedParams()
    segment: SegmentParams = SegmentParams()
    bank: BankParams = BankParams()
    retrieve: RetrieveParams = RetrieveParams()
    shard_size: int = Field(8, ge=1, description="Images per cached task.")

    @model_validator(mode="after")
    def _box_seeds_need_box_proposals(self) -> "RunParams":
        if self.seed.method == "boxes" and self.propose.method != "boxes":
            raise ValueError("seed.method 'boxes' labels each proposal with the class of the detector's box it was "
                             "made in: set propose.method to 'boxes' too")
        return self

    @model_validator(mode="after")
    def _the_head_is_trained_where_it_labels(self) -> "RunParams":
        if self.retrieve.method == "segmenter" and not self.segment.enabled:
            raise ValueError("retrieve.method 'segmenter' labels the images with the second stage's head: "
                             "set segment.enabled to true, or retrieve.method to 'bank'")
        return self
