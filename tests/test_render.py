"""Pictures of arrays: palette colours, outlines exactly on mask edges, feature PCA, heat maps, layout."""

from __future__ import annotations

import numpy as np
import pytest

from maskbank.tasks import render


def test_label_palette_is_the_voc_colour_map():
    p = render.label_palette(256)
    assert p.dtype == np.uint8 and p.shape == (256, 3)
    assert p[0].tolist() == [0, 0, 0]
    assert p[1].tolist() == [128, 0, 0]
    assert p[2].tolist() == [0, 128, 0]
    assert p[3].tolist() == [128, 128, 0]
    assert p[15].tolist() == [192, 128, 128]  # VOC "person"
    assert p[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in p}) == 256
    assert (render.label_palette(20) == p[:20]).all()  # a class keeps its colour


def test_colorize_labels_paints_each_pixel_its_class_colour():
    labels = np.zeros((4, 5), np.uint8)
    labels[1, 2] = 7
    labels[3, :] = 255
    labels[0, 4] = 300 % 256  # 44
    out = render.colorize_labels(labels, ignore_index=255)
    palette = render.label_palette(256)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[1, 2].tolist() == palette[7].tolist()
    assert out[0, 4].tolist() == palette[44].tolist()
    assert out[0, 0].tolist() == [0, 0, 0]
    assert (out[3] == 255).all()  # ignore is white
    big = np.array([[0, 1000]], np.uint16)
    assert render.colorize_labels(big)[0, 1].tolist() == render.label_palette(1001)[1000].tolist()
    with pytest.raises(ValueError, match="integer"):
        render.colorize_labels(np.zeros((2, 2), np.float32))


def test_mask_edges_are_the_masks_own_boundary_pixels():
    m = np.zeros((8, 10), bool)
    m[2:6, 3:8] = True  # rows 2..5, cols 3..7
    edges = render.mask_edges(m)
    expected = m.copy()
    expected[3:5, 4:7] = False  # the interior
    assert (edges == expected).all()
    assert edges.sum() == 2 * 5 + 2 * 2
    full = np.ones((3, 4), bool)  # the image border counts as outside
    assert (render.mask_edges(full) == np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]], bool)).all()
    assert not render.mask_edges(np.zeros((3, 3), bool)).any()
    dot = np.zeros((3, 3), bool)
    dot[1, 1] = True
    assert (render.mask_edges(dot) == dot).all()


def test_outlines_are_drawn_exactly_on_mask_edges_and_nowhere_else():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 4:12, 5:15] = True
    masks[1, 12:18, 5:25] = True  # touches mask 0 along row 11/12
    colors = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    before = image.copy()
    out = render.draw_outlines(image, masks, colors)
    e0, e1 = render.mask_edges(masks[0]), render.mask_edges(masks[1])
    assert (out[e0] == colors[0]).all() and (out[e1] == colors[1]).all()
    untouched = ~(e0 | e1)
    assert (out[untouched] == image[untouched]).all()
    assert out[4, 5].tolist() == [255, 0, 0] and out[5, 6].tolist() == image[5, 6].tolist()
    assert (image == before).all()  # the input is not modified
    default = render.draw_outlines(image, masks)
    assert default[e0][0].tolist() == render.proposal_colors(2)[0].tolist()
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        render.draw_outlines(image, masks[:, :10])


def test_proposal_colors_are_distinct_and_bright():
    c = render.proposal_colors(12)
    assert c.shape == (12, 3) and c.dtype == np.uint8
    assert len({tuple(x) for x in c}) == 12
    assert (c.max(axis=1) == 255).all()
    assert render.proposal_colors(0).shape == (0, 3)


def test_pca_rgb_separates_two_kinds_of_token():
    rng = np.random.default_rng(1)
    feats = np.empty((6, 8, 16), np.float32)
    u, v = rng.normal(size=16), rng.normal(size=16)
    feats[:, :4] = u
    feats[:, 4:] = v
    feats += rng.normal(scale=1e-3, size=feats.shape)
    rgb = render.pca_rgb(feats)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    first = rgb[..., 0]
    assert {round(float(first[:, :4].mean())), round(float(first[:, 4:].mean()))} == {0, 1}
    assert np.allclose(first[:, :4], first[0, 0], atol=0.05) and np.allclose(first[:, 4:], first[0, 4], atol=0.05)


def test_pca_rgb_with_fewer_components_leaves_channels_black():
    feats = np.zeros((3, 3, 2), np.float32)
    feats[..., 0] = np.arange(9).reshape(3, 3)
    feats[..., 1] = np.arange(9).reshape(3, 3) % 2
    rgb = render.pca_rgb(feats)
    assert (rgb[..., 2] == 0).all()
    assert rgb[..., 0].max() == 1.0 and rgb[..., 0].min() == 0.0
    assert render.to_uint8(rgb).dtype == np.uint8


def test_heatmap_maps_low_to_black_high_to_yellow_and_nan_to_grey():
    from matplotlib import colormaps

    values = np.array([[0.0, 0.5], [1.0, np.nan]])
    out = render.heatmap(values)
    lut = (np.asarray(colormaps["inferno"](np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)
    assert out[0, 0].tolist() == lut[0].tolist()
    assert out[1, 0].tolist() == lut[255].tolist()
    assert out[0, 1].tolist() == lut[128].tolist()
    assert out[1, 1].tolist() == [128, 128, 128]
    fixed = render.heatmap(np.array([[0.5]]), vmin=0.0, vmax=2.0)
    assert fixed[0, 0].tolist() == lut[64].tolist()


def test_resize_nearest_keeps_label_values():
    labels = np.array([[0, 3], [5, 7]], np.uint8)
    up = render.resize(labels, (4, 4), nearest=True)
    assert up.dtype == np.uint8 and set(np.unique(up)) == {0, 3, 5, 7}
    assert (up[:2, :2] == 0).all() and (up[2:, 2:] == 7).all()
    assert render.resize(np.zeros((2, 2, 3), np.uint8), (3, 5)).shape == (3, 5, 3)


def test_highlight_paints_mask_over_grey():
    image = np.full((4, 4, 3), (200, 100, 50), np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    out = render.highlight(image, mask)
    assert out[1, 2].tolist() == list(render.DIFFERENCE_COLOR)
    rest = out[~mask]
    assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()
    assert rest[0, 0] == round((0.299 * 200 + 0.587 * 100 + 0.114 * 50) * 0.35)


def test_side_by_side_places_panels_where_documented():
    a = np.full((10, 6, 3), 10, np.uint8)
    b = np.full((4, 3, 3), 20, np.uint8)
    out = render.side_by_side([a, b], ["a", "b"])
    g, top = render.GAP, render.GAP + render.TITLE_HEIGHT
    assert out.shape == (top + 10 + g, g + 6 + g + 3 + g, 3)
    assert (out[top:top + 10, g:g + 6] == 10).all()
    x = g + 6 + g
    assert (out[top:top + 4, x:x + 3] == 20).all()
    assert (out[top + 4:top + 10, x:x + 3] == 255).all()  # white under the shorter panel
    assert (out[:g] == 255).all()
    untitled = render.side_by_side([a])
    assert untitled.shape == (g + 10 + g, g + 6 + g, 3) and (untitled[g:g + 10, g:g + 6] == 10).all()
    with pytest.raises(ValueError, match="titles"):
        render.side_by_side([a, b], ["only one"])


def test_class_legend_shows_the_classes_present_in_their_colours():
    labels = np.zeros((5, 5), np.uint8)
    labels[0, 0] = 3
    labels[1, 1] = 255
    names = ["background", "a", "b", "c"]
    leg = render.class_legend([labels], names, ignore_index=255)
    colours = {tuple(c) for c in leg.reshape(-1, 3)}
    palette = render.label_palette(4)
    assert tuple(palette[3]) in colours and tuple(palette[0]) in colours
    assert tuple(palette[1]) not in colours and tuple(palette[2]) not in colours
    rows = render.FONT_SIZE + 6
    assert leg.shape[0] == 3 * rows + 6  # background, c, ignore


def test_overlay_blends_class_colours_and_keeps_the_photo_where_told():
    from maskbank.tasks.render import OVERLAY_ALPHA, label_palette, overlay_labels

    image = np.full((4, 6, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2]], np.uint8).repeat(2, axis=0)  # 2x3: scaled up to 4x6, nearest
    labels[1, 2] = 255
    out = overlay_labels(image, labels, ignore_index=255, unlabelled=0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[:, :2] == 100).all()  # unlabelled: the photo
    assert (out[2:, 4:] == 100).all()  # ignore: the photo
    want = np.round(100 * (1 - OVERLAY_ALPHA) + label_palette(3)[1] * OVERLAY_ALPHA).astype(np.uint8)
    assert (out[:, 2:4] == want).all()
    want2 = np.round(100 * (1 - OVERLAY_ALPHA) + label_palette(3)[2] * OVERLAY_ALPHA).astype(np.uint8)
    assert (out[:2, 4:] == want2).all()


def test_thumbnail_shrinks_the_longer_side_and_never_enlarges():
    from maskbank.tasks.render import thumbnail, thumbnail_size

    assert thumbnail_size((1000, 500), 320) == (320, 160)
    assert thumbnail_size((10, 20), 320) == (10, 20)
    big = np.zeros((640, 100, 3), np.uint8)
    assert thumbnail(big, 320).shape == (320, 50, 3)
    small = np.zeros((5, 7, 3), np.uint8)
    assert thumbnail(small, 320) is small
