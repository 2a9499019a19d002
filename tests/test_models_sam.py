import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from maskbank.tasks.models.device import autocast, resolve_device
from maskbank.tasks.models.sam import SAM_BUILDERS, assemble_sam, build_sam
from maskbank.tasks.models.tiny_vit import TinyViT, tiny_vit
from maskbank.tasks.models.tiny_vit import _TinyViT as UpstreamTinyViT  # mobile_sam's, imported quietly

TINY = dict(embed_dims=(8, 16, 32, 320), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_sizes=(7, 7, 14, 7))

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("size", [512, 1024])
def test_tiny_vit_grid_follows_input_size(size):
    enc = tiny_vit(size, **TINY).eval()
    with torch.no_grad():
        out = enc(torch.zeros(2, 3, size, size))
    assert out.shape == (2, 256, size // 16, size // 16)


def test_tiny_vit_matches_upstream_at_1024():
    ours = tiny_vit(1024, **TINY)
    _randomise(ours)
    upstream = UpstreamTinyViT(
        img_size=1024, embed_dims=list(TINY["embed_dims"]), depths=list(TINY["depths"]),
        num_heads=list(TINY["num_heads"]), window_sizes=list(TINY["window_sizes"]), drop_path_rate=0.0,
    )
    upstream.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), upstream.eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), upstream(x), rtol=0, atol=0)


def test_tiny_vit_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_vit(500)
    with pytest.raises(ValueError, match="last embed dim"):
        tiny_vit(64, embed_dims=(8, 16, 32, 64))


def test_vit_t_checkpoint_loads_strict_at_1024_and_512(tmp_path):
    src = build_sam("vit_t", image_size=1024)
    assert isinstance(src.image_encoder, TinyViT)
    _randomise(src)
    ckpt = tmp_path / "mobile_sam.pt"
    torch.save(src.state_dict(), ckpt)
    for size in (1024, 512):
        sam = build_sam("vit_t", ckpt, image_size=size)
        assert sam.image_encoder.img_size == size
        assert sam.prompt_encoder.image_embedding_size == (size // 16, size // 16)
        assert not sam.training and not any(p.requires_grad for p in sam.parameters())
        for (name, a), b in zip(sam.state_dict().items(), src.state_dict().values()):
            assert torch.equal(a, b), name
        # eval() after loading: TinyViT's cached attention biases match the loaded ones
        for m in sam.image_encoder.modules():
            if hasattr(m, "attention_bias_idxs"):
                assert torch.equal(m.ab, m.attention_biases[:, m.attention_bias_idxs])


def test_registry_names_and_errors():
    assert set(SAM_BUILDERS) == {"vit_t", "vit_b", "vit_l", "vit_h"}
    with pytest.raises(ValueError, match="unknown SAM arch"):
        build_sam("vit_x")
    for arch in ("vit_b", "vit_l", "vit_h"):
        with pytest.raises(ValueError, match="image_size 1024 only"):
            build_sam(arch, image_size=512)


def test_vit_b_builds_at_1024():
    sam = build_sam("vit_b")
    assert isinstance(sam.image_encoder, ImageEncoderViT)
    assert sam.image_encoder.img_size == 1024 and not sam.training
    assert sum(p.numel() for p in sam.image_encoder.parameters()) == 89_670_912


def test_assemble_sam_runs_a_tiny_vit_encoder():
    enc = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=256,
                          use_rel_pos=True, window_size=2, global_attn_indexes=(1,))
    sam = assemble_sam(enc, 64).eval()
    with torch.no_grad():
        emb = sam.image_encoder(torch.zeros(1, 3, 64, 64))
        sparse, dense = sam.prompt_encoder(points=(torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]])),
                                           boxes=None, masks=None)
        masks, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert emb.shape == (1, 256, 4, 4) and masks.shape == (1, 3, 16, 16) and iou.shape == (1, 3)
    with pytest.raises(ValueError, match="img_size"):
        assemble_sam(enc, 128)


def test_resolve_device_and_autocast():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    lin = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), bf16=True):
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), bf16=False):
        assert lin(torch.ones(1, 4)).dtype == torch.float32
