"""The overlay picture (``overlay.py``): title bar coloured by the verdict, legend, checkerboard, capped markers."""

import numpy as np

from RayEmbRegistrationLib.outputs.overlay import VERDICT_BGR, checkerboard, overlay_image, to_uint8
from RayEmbRegistrationLib.results import Landmark


def _marks(n_bone: int):
    fid = [Landmark("F1", np.zeros(3), np.array([10.0, 10.0]), np.array([11.0, 10.0]), 0.9, "fiducial", True)]
    return fid + [Landmark(f"b{i}", np.zeros(3), np.array([20.0 + i % 50, 30.0 + i // 50]), np.full(2, np.nan),
                           i / n_bone, "bone", i % 2 == 0) for i in range(n_bone)]


def test_checkerboard_alternates_the_two_images():
    a, b = np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)
    c = checkerboard(a, b, tiles=4)
    assert c[0, 0] == 0 and c[0, 16] == 255 and c[16, 0] == 255 and c[16, 16] == 0
    assert (c == 0).mean() == 0.5


def test_overlay_layout_verdict_colour_and_marker_cap():
    rng = np.random.default_rng(0)
    x = rng.random((128, 96)).astype(np.float32)
    img = overlay_image(x, x[::2, ::2], _marks(300), min_size=256, title="ACCEPTED", verdict="rejected")
    h = int(round(128 * 2))
    assert img.shape == (28 + h + 24, 2 * int(round(96 * 2)), 3)  # title bar, X-ray | checkerboard, legend
    assert tuple(img[2, -2]) == VERDICT_BGR["rejected"]  # the bar's colour says the verdict
    few = overlay_image(x, None, _marks(300), min_size=256, max_bone=5)
    many = overlay_image(x, None, _marks(300), min_size=256, max_bone=300)
    yellow = lambda im: int(np.all(im == (0, 230, 255), axis=-1).sum())  # noqa: E731
    assert 0 < yellow(few) < yellow(many)  # bone markers are capped
    assert few.shape[1] == int(round(96 * 2))  # no DRR: no checkerboard panel
    assert to_uint8(np.full((3, 3), np.nan)).max() == 0


def test_pixels_the_keep_mask_drops_are_tinted_and_named_in_the_legend():
    x = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (128, 1))
    keep = np.ones((128, 96), bool)
    keep[:, :20] = False  # a shutter on the left
    plain = overlay_image(x, None, (), min_size=256)
    tinted = overlay_image(x, None, (), min_size=256, keep=keep)
    body = slice(28, 28 + 256)

    def grey(im):
        return (im[..., 0] == im[..., 1]) & (im[..., 1] == im[..., 2])

    assert grey(plain[body]).all()
    assert not grey(tinted[body, :38]).any() and grey(tinted[body, 42:]).all()  # 20 px × 2 tinted, the rest grey
    assert not np.array_equal(plain[-24:], tinted[-24:])  # the legend names what is not compared
    assert np.array_equal(overlay_image(x, None, (), min_size=256, keep=np.ones_like(keep)), plain)


def test_heatmap_picture_has_a_colour_bar_and_marks_the_peak():
    from RayEmbRegistrationLib.outputs.overlay import heatmap_image

    s = np.zeros((32, 32))
    s[10, 20] = 1.0
    img = heatmap_image(s, (20.0, 10.0), "P1", scale=2)
    assert img.shape[0] == 20 + 64 and img.shape[1] == 64 + 4 + 18 + 44
    assert tuple(img[20 + 21, 41]) == (255, 255, 255)  # the white cross on the peak pixel (scaled)
    bar = img[20:, 64 + 4 + 5]
    assert int(bar[0].sum()) > int(bar[-1].sum())  # the colour bar runs from 1 (bright, top) to 0 (dark, bottom)
