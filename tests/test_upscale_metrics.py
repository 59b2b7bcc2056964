"""SR numerics: MATLAB bicubic imresize, BasicSR PSNR/SSIM, and the Set5 bicubic baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from cvkit.tasks.upscale.imresize import imresize, imresize_np, resize_matrix
from cvkit.tasks.upscale.metrics import modcrop, psnr, rgb_to_y, rgb_to_ycbcr, ssim, ycbcr_to_rgb
from parity import DATA, load_fixture

from cvkit.errors import UsageError

STEMS = ("down2", "down3", "down4", "up2", "up3", "up4")


def _max_err(out: torch.Tensor, ref: torch.Tensor, name: str) -> float:
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    return (out.double() - ref.double()).abs().max().item()


def test_imresize_float64_matches_matlab_port_to_1e_12():
    meta, ref, _ = load_fixture("metrics", "imresize")
    for stem in STEMS:
        err = _max_err(imresize(ref["input"].double(), meta["scales"][stem]), ref[stem], stem)
        assert err <= meta["tolerance"]["atol"], f"{stem}: max error {err:.3g}"


def test_imresize_float32_matches_basicsr_float32():
    meta, ref, _ = load_fixture("metrics", "imresize")
    for stem in STEMS:
        out = imresize(ref["input"].float(), meta["scales"][stem])
        assert out.dtype == torch.float32
        err = _max_err(out, ref[f"basicsr_f32.{stem}"], stem)
        assert err <= 5e-6, f"basicsr_f32.{stem}: max error {err:.3g}"


def test_imresize_numpy_hwc_equals_torch_nchw_and_size_gives_that_scale():
    x = torch.rand(1, 3, 17, 23, dtype=torch.float64)
    hwc = x[0].permute(1, 2, 0).numpy()
    out = imresize(x, 0.5)
    assert np.allclose(imresize_np(hwc, 0.5), out[0].permute(1, 2, 0).numpy(), atol=1e-15)
    assert torch.equal(imresize(x, size=(34, 46)), imresize(x, 2))
    assert imresize(x, (2, 0.5)).shape == (1, 3, 34, 12)
    assert imresize(x, 1.5).shape == (1, 3, 26, 35)  # ceil(in * scale)


def test_resize_matrix_rows_sum_to_one_and_it_is_cached():
    m = resize_matrix(40, 13, 1 / 3)
    assert torch.allclose(m.sum(1), torch.ones(13, dtype=torch.float64), atol=1e-12)
    assert resize_matrix(40, 13, 1 / 3) is m


def test_banded_resize_across_many_blocks_equals_the_dense_matrix_product():
    x = torch.rand(1, 2, 100, 700, dtype=torch.float64)
    for scale in ((3, 3), (0.4, 0.4), (2, 0.5)):  # 300x2100 (2 x 9 bands), 40x280, 200x350
        out = imresize(x, scale)
        mh = resize_matrix(100, out.shape[-2], scale[0])
        mw = resize_matrix(700, out.shape[-1], scale[1])
        err = (out - mh @ x @ mw.T).abs().max().item()
        assert err <= 1e-12, f"x{scale}: max error {err:.3g}"


def test_imresize_needs_exactly_one_of_scale_and_size():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UsageError):
        imresize(x)
    with pytest.raises(UsageError):
        imresize(x, 2, size=(16, 16))


def test_psnr_and_ssim_match_basicsr():
    meta, ref, _ = load_fixture("metrics", "psnr_ssim")
    tol = meta["tolerance"]
    for r in meta["results"]:
        img, gt = ref[f"pair{r['pair']}.img"].numpy(), ref[f"pair{r['pair']}.ref"].numpy()
        for crop in (0, 4):
            for y, tag in ((False, "rgb"), (True, "y")):
                key = f"{tag}_crop{crop}"
                p, s = psnr(img, gt, crop, y_channel=y), ssim(img, gt, crop, y_channel=y)
                assert abs(p - r[f"psnr_{key}"]) <= tol["psnr_abs_db"], f"pair {r['pair']} psnr_{key}: {p}"
                assert abs(s - r[f"ssim_{key}"]) <= tol["ssim_abs"], f"pair {r['pair']} ssim_{key}: {s}"


def test_psnr_of_identical_images_is_inf_and_ssim_one():
    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert psnr(img, img) == float("inf")
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)


def test_ycbcr_round_trip_and_luma_agree_with_rgb_to_y():
    rgb = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    ycbcr = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycbcr_to_rgb(ycbcr), rgb, atol=1e-12)
    y_np = rgb_to_y(rgb[0].permute(1, 2, 0).numpy() * 255)
    assert np.allclose(ycbcr[0, 0].numpy() * 255, y_np, atol=1e-4)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_reproduces_basicsr_and_published_protocols(scale):
    """Protocol A (RGB resize, uint8 LR, float Y metrics; cvkit's default) and C (uint8 Y only,
    the published MATLAB numbers), per image, within the fixture's tolerance."""
    import cv2

    meta, _, _ = load_fixture("metrics", "set5_bicubic")
    tol = meta["tolerance"]
    results = meta["results"][f"x{scale}"]
    for name, want in results["per_image"].items():
        hr = modcrop(cv2.imread(str(DATA / "sr" / "Set5" / f"{name}.png"))[..., ::-1], scale)
        lr = _u8(imresize_np(hr.astype(np.float32) / 255.0, 1 / scale))
        sr = _u8(imresize_np(lr.astype(np.float32) / 255.0, scale))
        y = rgb_to_y(hr, round_uint8=True)
        sr_y = _u8(imresize_np(imresize_np(y.astype(np.float32) / 255.0, 1 / scale), scale))
        got = {"psnr_y_A": psnr(sr, hr, scale), "ssim_y_A": ssim(sr, hr, scale),
               "psnr_y_C": psnr(sr_y, y, scale), "ssim_y_C": ssim(sr_y, y, scale)}
        for key, value in got.items():
            bound = tol["psnr_abs_db"] if key.startswith("psnr") else tol["ssim_abs"]
            assert abs(value - want[key]) <= bound, f"x{scale} {name} {key}: {value} vs {want[key]}"
