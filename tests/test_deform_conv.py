"""Pure-PyTorch deformable convolution against torchvision's op (deform_conv2d fixture) and
against plain convolution where the two must agree."""
import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, load_fixture

from cvkit.nn.deform_conv import DeformConv2d, ModulatedDeformConv2d, deform_conv2d


@pytest.mark.parametrize("case", ["c1", "c2", "c3"])
def test_deform_conv2d_matches_torchvision(case):
    meta, ref, _ = load_fixture("heads", "deform_conv2d")
    cfg = meta["cases"][case]
    out = deform_conv2d(ref[f"{case}.input"], ref[f"{case}.offset"], ref[f"{case}.weight"],
                        ref[f"{case}.bias"], cfg["stride"], cfg["padding"], cfg["dilation"],
                        ref.get(f"{case}.mask"))
    assert_close(out, ref[f"{case}.output"], meta["tolerance"], f"{case}.output")


@pytest.mark.parametrize("stride,padding,dilation,groups,deform_groups", [
    (1, 1, 1, 1, 1), (2, 0, 1, 2, 2), (1, 2, 2, 3, 1), ((2, 1), (1, 2), (1, 2), 1, 3)])
def test_zero_offsets_and_unit_mask_equal_plain_conv(stride, padding, dilation, groups, deform_groups):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11)
    w = torch.randn(6, 6 // groups, 3, 3)
    b = torch.randn(6)
    ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
    offset = torch.zeros(2, 2 * deform_groups * 9, *ref.shape[-2:])
    mask = torch.ones(2, deform_groups * 9, *ref.shape[-2:])
    assert_close(deform_conv2d(x, offset, w, b, stride, padding, dilation), ref, {"rtol": 1e-5, "atol": 1e-5},
                 "dcnv1")
    assert_close(deform_conv2d(x, offset, w, b, stride, padding, dilation, mask), ref,
                 {"rtol": 1e-5, "atol": 1e-5}, "dcnv2")


def test_integer_offset_shifts_the_image_and_reads_zero_outside():
    """dy = +1 for every tap samples one row lower: tap i of output row oy reads row oy + i, i.e.
    a convolution without top padding and with two zero rows at the bottom; a far offset reads
    only zeros."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 7, 8)
    w = torch.randn(4, 3, 3, 3)
    offset = torch.zeros(1, 18, 7, 8)
    offset[:, 0::2] = 1.0
    assert_close(deform_conv2d(x, offset, w, None, 1, 1), F.conv2d(F.pad(x, (1, 1, 0, 2)), w),
                 {"rtol": 1e-5, "atol": 1e-5}, "shifted")
    assert deform_conv2d(x, offset + 50.0, w, None, 1, 1).abs().max() == 0


def test_deform_conv2d_gradients_match_finite_differences():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    offset = (torch.rand(1, 16, 3, 3, dtype=torch.float64) * 3 - 1.5).requires_grad_()
    w = torch.randn(2, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d(*a[:4], mask=a[4]), (x, offset, w, b, mask))


def test_mismatched_offset_shape_raises():
    with pytest.raises(ValueError, match="do not agree"):
        deform_conv2d(torch.randn(1, 4, 8, 8), torch.zeros(1, 18, 4, 4), torch.randn(4, 4, 3, 3), padding=1)


def test_modules_have_mmcv_pack_keys_and_start_as_plain_conv():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 10, 12)
    v1 = DeformConv2d(8, 6, 3, padding=1, deform_groups=2)
    v2 = ModulatedDeformConv2d(8, 6, 3, stride=2, padding=1, deform_groups=2, bias=False)
    assert set(v1.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    assert set(v2.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    assert v1.conv_offset.out_channels == 2 * 2 * 9 and v2.conv_offset.out_channels == 3 * 2 * 9
    tol = {"rtol": 1e-5, "atol": 1e-6}
    assert_close(v1(x), F.conv2d(x, v1.weight, v1.bias, 1, 1), tol, "DeformConv2d at init")
    # Zero conv_offset output: mask = sigmoid(0) = 0.5.
    assert_close(v2(x), 0.5 * F.conv2d(x, v2.weight, None, 2, 1), tol, "ModulatedDeformConv2d at init")


def test_modulated_module_splits_offsets_and_mask_in_thirds():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 7)
    m = ModulatedDeformConv2d(4, 5, 3, padding=1, deform_groups=2)
    torch.nn.init.normal_(m.conv_offset.weight, std=0.3)
    raw = m.conv_offset(x)
    offset, mask = raw[:, :36], torch.sigmoid(raw[:, 36:])
    ref = deform_conv2d(x, offset, m.weight, m.bias, 1, 1, 1, mask)
    assert_close(m(x), ref, {"rtol": 1e-6, "atol": 1e-6}, "ModulatedDeformConv2d")
