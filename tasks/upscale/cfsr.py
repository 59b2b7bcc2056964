"""CFSR: Wu, Jiang, Jiang & Liu, "Transforming Image Super-Resolution: A ConvFormer-based Efficient
Approach", IEEE TIP 2024 (arXiv 2401.05633); official code Aitical/CFSR.

What is new: self-attention is replaced by ConvMod, a large-kernel (9x9 depthwise) convolutional
modulation, and the feed-forward network (EFN) gains a depthwise 3x3 with Sobel-x, Sobel-y and
Laplacian branches that are merged into the 3x3 kernel for inference.

This module is the training form with the edge branches; `cvkit.nn.deploy(model)` merges them and
its state_dict is then exactly the released `model_zoo/CFSR_x{2,3,4}.pth` layout (the official
constructor merges at once, so those files hold only the merged form). The `cfsr` converter maps
either layout onto the training form: merged checkpoints get zero-valued branches, which compute
the same function and can be fine-tuned.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.errors import CvkitError, UsageError
from cvkit.nn.layers import LayerNorm2d
from cvkit.weights import register_converter

SCALES = (2, 3, 4)
RGB_MEAN = (0.4488, 0.4371, 0.4040)

# The official masks, quirks included: Sobel-x has its top row shifted right by one and the
# Laplacian's top 1 sits at (0, 0) instead of (0, 1). They are constants, not weights.
EDGE_MASKS = {
    "sobel_x": ((0.0, 1.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    "sobel_y": ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
    "laplacian": ((1.0, 0.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
}


class ConvMod(nn.Module):
    """Convolutional modulation: proj(A(LN x) * v(LN x)), A = 1x1 -> GELU -> depthwise 9x9."""

    def __init__(self, dim: int, dw_size: int = 9):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.a = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(),
                               nn.Conv2d(dim, dim, dw_size, padding=dw_size // 2, groups=dim))
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.proj(self.a(x) * self.v(x))


class EFN(nn.Module):
    """Edge-preserving feed-forward network: LN -> fc1 -> GELU -> h; h + GELU(dw3x3(h) + edge
    branches(h)) -> fc2. Each edge branch is a depthwise 3x3 with kernel scale[c] * mask + bias."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.edges = tuple(EDGE_MASKS)
        for name, mask in EDGE_MASKS.items():
            setattr(self, f"scale_{name}", nn.Parameter(torch.randn(hidden, 1, 1, 1) * 1e-3))
            setattr(self, f"{name}_bias", nn.Parameter(torch.zeros(hidden)))
            self.register_buffer(f"mask_{name}", torch.tensor(mask).expand(hidden, 1, 3, 3).clone(),
                                 persistent=False)
        self.norm = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.pos = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(self.norm(x)))
        out = self.pos(h)
        for name in self.edges:
            kernel = getattr(self, f"scale_{name}") * getattr(self, f"mask_{name}")
            out = out + F.conv2d(h, kernel, getattr(self, f"{name}_bias"), padding=1, groups=h.shape[1])
        return self.fc2(h + self.act(out))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the edge branches into `pos` (the official `merge_mlp`) and drop them."""
        for name in self.edges:
            self.pos.weight += getattr(self, f"scale_{name}") * getattr(self, f"mask_{name}")
            self.pos.bias += getattr(self, f"{name}_bias")
            for attr in (f"scale_{name}", f"{name}_bias", f"mask_{name}"):
                delattr(self, attr)
        self.edges = ()


class Block(nn.Module):
    """x + ls1 * ConvMod(x), then x + ls2 * EFN(x), with per-channel layer scales."""

    def __init__(self, dim: int, dw_size: int, mlp_ratio: float):
        super().__init__()
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), 1e-6))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), 1e-6))
        self.attn = ConvMod(dim, dw_size)
        self.mlp = EFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1[:, None, None] * self.attn(x)
        return x + self.layer_scale_2[:, None, None] * self.mlp(x)


class Layer(nn.Module):
    """A stack of blocks, then a 1x1 conv with a residual around the conv only."""

    def __init__(self, dim: int, depth: int, dw_size: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.Sequential(*(Block(dim, dw_size, mlp_ratio) for _ in range(depth)))
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        return self.conv(y) + y


class CFSR(nn.Module):
    """CFSR with the released configuration (embed 48, depths (6, 6), 9x9 modulation, mlp ratio
    2, direct pixel-shuffle upsampler). RGB in [0, 1] -> RGB at `scale` x the size, not clamped."""

    in_channels = "rgb"

    def __init__(self, scale: int = 4, embed_dim: int = 48, depths: tuple[int, ...] = (6, 6),
                 dw_size: int = 9, mlp_ratio: float = 2.0):
        super().__init__()
        if scale not in SCALES:
            raise UsageError(f"CFSR supports scales {', '.join(map(str, SCALES))}; got {scale}")
        self.scale = scale
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, embed_dim, 3, padding=1)
        self.layers = nn.ModuleList(Layer(embed_dim, d, dw_size, mlp_ratio) for d in depths)
        self.norm = LayerNorm2d(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, 3 * scale * scale, 3, padding=1),
                                      nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x - self.mean)
        y = x
        for layer in self.layers:
            y = layer(y)
        x = self.conv_after_body(self.norm(y)) + x
        return self.upsample(x) + self.mean


@register_converter("cfsr")
def convert_cfsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CFSR state_dict (released merged layout, or the unmerged training layout) ->
    cvkit's training form. The constant masks are checked and dropped; merged checkpoints get
    zero edge branches."""
    out = {}
    for key, value in sd.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf.startswith("mask_"):
            expected = torch.tensor(EDGE_MASKS[leaf[5:]]).expand_as(value)
            if not torch.equal(value.float(), expected):
                raise CvkitError(f"CFSR checkpoint: {key} is not the official {leaf[5:]} mask")
            continue
        out[key.replace(".attn.a.2.lkb_reparam.", ".attn.a.2.")] = value
    for key, pos in list(out.items()):
        if key.endswith(".mlp.pos.weight") and key.replace("pos.weight", "scale_sobel_x") not in out:
            prefix = key[:-len("pos.weight")]
            for name in EDGE_MASKS:
                out[f"{prefix}scale_{name}"] = pos.new_zeros(pos.shape[0], 1, 1, 1)
                out[f"{prefix}{name}_bias"] = pos.new_zeros(pos.shape[0])
    return out
