"""Panoptic SegFormer: "Panoptic SegFormer: Delving Deeper into Panoptic Segmentation with
Transformers", Li et al., CVPR 2022 (arXiv 2109.03814); layout of zhiqi-li/Panoptic-SegFormer @ cdb9b68
(`PanSeg` with `PanformerHead`, R-50 configuration), structure as fixed by
fixtures/heads/NOTES_PANOPTIC.md section 3.

What is new: things and stuff are both predicted as masks from queries. A deformable-attention
encoder (Deformable DETR) refines multi-scale features; a location decoder finds things as boxes
(with iterative box refinement); a mask decoder turns the selected thing queries and fixed stuff
queries into masks straight from the attention maps (per-level head mixing of the query-memory
attention); masks are merged mask-wise by class score x mask quality^2 (`segformer_mask_merge`).

Multi-scale deformable attention is plain PyTorch (`grid_sample`, bilinear, zeros outside,
align_corners False), the math of mmcv's kernel. Inference only; images are taken unpadded (one
size per batch), so every padding mask is empty and all valid ratios are 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cvkit.backbones import create_backbone
from cvkit.necks.channel_mapper import ChannelMapper
from cvkit.weights import register_converter, strip_prefix

from .postprocess import segformer_mask_merge, segformer_select_things

#: COCO panoptic category ids of the 80 thing + 53 stuff classes, in label order
COCO_PANOPTIC_CAT_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
    63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90, 92, 93, 95, 100,
    107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147, 148, 149, 151, 154, 155, 156, 159,
    161, 166, 168, 171, 175, 176, 177, 178, 180, 181, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195,
    196, 197, 198, 199, 200)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_position_encoding(mask: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0,
                           offset: float = -0.5, eps: float = 1e-6) -> torch.Tensor:
    """(B, 2 * num_feats, H, W) DETR sine encoding of a (B, H, W) padding mask (True = padded),
    normalised to 2 pi with `offset`; pairs interleave sin / cos; y features first, then x."""
    not_mask = (~mask).float()
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    y = (y + offset) / (y[:, -1:, :] + eps) * 2 * math.pi
    x = (x + offset) / (x[:, :, -1:] + eps) * 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    b, h, w = mask.shape

    def embed(v: torch.Tensor) -> torch.Tensor:
        v = v[..., None] / dim_t
        return torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), 4).view(b, h, w, -1)

    return torch.cat((embed(y), embed(x)), 3).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Deformable attention (Deformable DETR)


def multi_scale_deformable_attn(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                                weights: torch.Tensor) -> torch.Tensor:
    """value (B, S, heads, d) over the flattened levels `shapes`; locations (B, Q, heads, levels,
    points, 2) in [0, 1] (x, y); weights (B, Q, heads, levels, points). Returns (B, Q, heads * d):
    bilinear samples (zeros outside, align_corners False) summed with the weights."""
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for lvl, (v, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], 1), shapes)):
        v = v.flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*heads, Q, points, 2)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (torch.stack(sampled, -2).flatten(-2) * weights).sum(-1)
    return out.view(b, heads * d, q).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """mmcv's MultiScaleDeformableAttention (batch first): each query samples `points` locations
    per head and level around its reference point, weighted by a softmax over levels x points.
    Reference points (B, Q, levels, 2) are (x, y) centres: offsets are divided by the level's
    (W, H); (B, Q, levels, 4) are boxes: offsets / points x half the box size. Returns
    output_proj(sampled) + identity (the query without its position)."""

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 4, points: int = 4):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, value: torch.Tensor, pos: torch.Tensor | None,
                reference: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        identity = query
        if pos is not None:
            query = query + pos
        b, q, _ = query.shape
        value = self.value_proj(value).view(b, value.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        if reference.shape[-1] == 2:
            normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            loc = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        else:
            loc = (reference[:, :, None, :, None, :2]
                   + offsets / self.points * reference[:, :, None, :, None, 2:] * 0.5)
        return self.output_proj(multi_scale_deformable_attn(value, shapes, loc, weights)) + identity


class FFN(nn.Module):
    """mmcv FFN: Linear -> ReLU -> Linear with the identity added (keys `layers.0.0`, `layers.1`)."""

    def __init__(self, dim: int = 256, hidden: int = 1024):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True)),
                                    nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class SelfAttention(nn.Module):
    """mmcv MultiheadAttention for self-attention: q = k = x + pos, v = x, identity added
    (the torch module is `attn`)."""

    def __init__(self, dim: int = 256, heads: int = 8):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = x + pos
        return x + self.attn(qk, qk, x, need_weights=False)[0]


class EncoderLayer(nn.Module):
    """Post-norm: deformable self-attention -> LN -> FFN -> LN."""

    def __init__(self, dim: int = 256, ffn_dim: int = 1024):
        super().__init__()
        self.attentions = nn.ModuleList([MultiScaleDeformableAttention(dim)])
        self.ffns = nn.ModuleList([FFN(dim, ffn_dim)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])

    def forward(self, x, pos, reference, shapes):
        x = self.norms[0](self.attentions[0](x, x, pos, reference, shapes))
        return self.norms[1](self.ffns[0](x))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention -> LN -> deformable cross-attention into the memory -> LN -> FFN -> LN."""

    def __init__(self, dim: int = 256, ffn_dim: int = 1024):
        super().__init__()
        self.attentions = nn.ModuleList([SelfAttention(dim), MultiScaleDeformableAttention(dim)])
        self.ffns = nn.ModuleList([FFN(dim, ffn_dim)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, x, pos, memory, reference, shapes):
        x = self.norms[0](self.attentions[0](x, pos))
        x = self.norms[1](self.attentions[1](x, memory, pos, reference, shapes))
        return self.norms[2](self.ffns[0](x))


class Stack(nn.Module):
    """A named list of layers (`encoder.layers.{i}`, `decoder.layers.{i}`)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class DeformableTransformer(nn.Module):
    """Deformable DETR encoder (6 layers) and location decoder (6 layers, box refinement, not
    two-stage). Keys: `level_embeds`, `encoder.layers.{i}`, `decoder.layers.{i}`, `reference_points`."""

    def __init__(self, dim: int = 256, levels: int = 4, num_encoder: int = 6, num_decoder: int = 6):
        super().__init__()
        self.level_embeds = nn.Parameter(torch.zeros(levels, dim))
        self.encoder = Stack(EncoderLayer(dim) for _ in range(num_encoder))
        self.decoder = Stack(DecoderLayer(dim) for _ in range(num_decoder))
        self.reference_points = nn.Linear(dim, 2)
        nn.init.normal_(self.level_embeds)

    def encode(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(memory (B, S, C) over the levels flattened row-major, level shapes)."""
        shapes = [tuple(f.shape[-2:]) for f in features]
        srcs, poss, refs = [], [], []
        for lvl, f in enumerate(features):
            b, _, h, w = f.shape
            pos = sine_position_encoding(f.new_zeros(b, h, w, dtype=torch.bool), f.shape[1] // 2)
            srcs.append(f.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2) + self.level_embeds[lvl])
            ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=f.device),
                                    torch.linspace(0.5, w - 0.5, w, device=f.device), indexing="ij")
            refs.append(torch.stack((xs.reshape(-1) / w, ys.reshape(-1) / h), -1))
        x, pos = torch.cat(srcs, 1), torch.cat(poss, 1)
        reference = torch.cat(refs, 0)[None, :, None].expand(x.shape[0], -1, len(features), -1)
        for layer in self.encoder.layers:
            x = layer(x, pos, reference, shapes)
        return x, shapes

    def decode(self, memory: torch.Tensor, shapes, query_embedding: torch.Tensor, reg_branches: nn.ModuleList):
        """Location decoder: (states (L, B, Q, C), references (L + 1, B, Q, 2 or 4) sigmoid: the
        initial 2-d reference then the refined 4-d box after each layer)."""
        b = memory.shape[0]
        pos, query = query_embedding.split(query_embedding.shape[1] // 2, 1)
        pos, query = pos[None].expand(b, -1, -1), query[None].expand(b, -1, -1)
        reference = self.reference_points(pos).sigmoid()
        states, references = [], [reference]
        for layer, reg in zip(self.decoder.layers, reg_branches):
            query = layer(query, pos, memory, reference[:, :, None].expand(-1, -1, len(shapes), -1), shapes)
            tmp = reg(query)
            if reference.shape[-1] == 4:
                reference = (tmp + inverse_sigmoid(reference)).sigmoid()
            else:
                reference = torch.cat((tmp[..., :2] + inverse_sigmoid(reference), tmp[..., 2:]), -1).sigmoid()
            states.append(query)
            references.append(reference)
        return torch.stack(states), references


# ---------------------------------------------------------------------------------------------
# Mask decoder


class MaskAttention(nn.Module):
    """Query-to-memory attention whose logits A (B, heads, Q, S) also make a mask: per memory
    level a Linear(heads->heads)+ReLU over the head axis, levels 2 and 3 resized bilinearly to the
    level-1 grid, concatenated and mapped by Linear(3 heads->1)+ReLU to (B, Q, H1 * W1). With
    `value` (block attention), also returns proj(softmax(A) v); without (the final `attnen`),
    only the mask."""

    def __init__(self, dim: int = 256, heads: int = 8, value: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        if value:
            self.v = nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)
        for name in ("linear_l1", "linear_l2", "linear_l3"):
            setattr(self, name, nn.Sequential(nn.Linear(heads, heads), nn.ReLU(inplace=True)))
        self.linear = nn.Sequential(nn.Linear(heads * 3, 1), nn.ReLU(inplace=True))
        self.has_value = value

    def forward(self, query: torch.Tensor, memory: torch.Tensor, shapes: list[tuple[int, int]]):
        b, q, c = query.shape
        s = memory.shape[1]
        qh = self.q(query).view(b, q, self.heads, -1).transpose(1, 2)
        kh = self.k(memory).view(b, s, self.heads, -1).transpose(1, 2)
        attn = (qh @ kh.transpose(-2, -1)) * self.scale  # (B, heads, Q, S)
        logits = attn.permute(0, 2, 3, 1)  # (B, Q, S, heads)
        (h1, w1) = shapes[0]
        parts, start = [], 0
        for (h, w), linear in zip(shapes, (self.linear_l1, self.linear_l2, self.linear_l3)):
            part = linear(logits[:, :, start:start + h * w])
            start += h * w
            if (h, w) != (h1, w1):
                part = part.reshape(b * q, h, w, self.heads).permute(0, 3, 1, 2)
                part = F.interpolate(part, size=(h1, w1), mode="bilinear", align_corners=False)
                part = part.permute(0, 2, 3, 1).reshape(b, q, h1 * w1, self.heads)
            parts.append(part)
        mask = self.linear(torch.cat(parts, -1))[..., 0]
        if not self.has_value:
            return mask
        vh = self.v(memory).view(b, s, self.heads, -1).transpose(1, 2)
        x = (attn.softmax(-1) @ vh).transpose(1, 2).reshape(b, q, c)
        return self.proj(x), mask


class QuerySelfAttention(nn.Module):
    """ViT-style self-attention among the stuff queries (`qkv`, `proj`)."""

    def __init__(self, dim: int = 256, heads: int = 8):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int = 256, hidden: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MaskBlock(nn.Module):
    """[q = LN(q + SelfAttn(q)) for stuff] -> q = LN(q + MaskAttention(q, memory)) -> q = LN(q + MLP(q));
    LayerNorm eps 1e-6. Returns (q, mask)."""

    def __init__(self, dim: int = 256, heads: int = 8, self_attn: bool = False):
        super().__init__()
        self.head_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MaskAttention(dim, heads)
        self.head_norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)
        if self_attn:
            self.self_attention = QuerySelfAttention(dim, heads)
            self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = self_attn

    def forward(self, q: torch.Tensor, memory: torch.Tensor, shapes):
        if self.self_attn:
            q = self.norm3(q + self.self_attention(q))
        x, mask = self.attn(q, memory, shapes)
        q = self.head_norm1(q + x)
        return self.head_norm2(q + self.mlp(q)), mask


class MaskDecoder(nn.Module):
    """Blocks over the memory (no memory position), then `attnen` makes the final masks. A query
    position, if given, is added before every block and before `attnen`."""

    def __init__(self, dim: int = 256, heads: int = 8, depth: int = 4, self_attn: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(MaskBlock(dim, heads, self_attn) for _ in range(depth))
        self.attnen = MaskAttention(dim, heads, value=False)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, shapes, pos: torch.Tensor | None = None):
        """(final masks (B, Q, H1 * W1), output of the last block (B, Q, C))."""
        for block in self.blocks:
            query, _ = block(query if pos is None else query + pos, memory, shapes)
        return self.attnen(query if pos is None else query + pos, memory, shapes), query


def _reg_branch(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, 4))


class PanformerHead(nn.Module):
    """Transformer, per-layer class / box branches, query tables and the two mask decoders.
    `reg_branches2`, `cls_thing_branches` and `cls_stuff_branches[:-1]` are training-only (deep
    supervision) and kept for the checkpoint layout."""

    def __init__(self, num_things: int = 80, num_stuff: int = 53, num_queries: int = 300, dim: int = 256,
                 num_decoder: int = 6, things_depth: int = 4, stuff_depth: int = 6):
        super().__init__()
        self.transformer = DeformableTransformer(dim, num_decoder=num_decoder)
        self.cls_branches = nn.ModuleList(nn.Linear(dim, num_things) for _ in range(num_decoder))
        self.reg_branches = nn.ModuleList(_reg_branch(dim) for _ in range(num_decoder))
        self.query_embedding = nn.Embedding(num_queries, dim * 2)
        self.stuff_query = nn.Embedding(num_stuff, dim * 2)
        self.reg_branches2 = nn.ModuleList(_reg_branch(dim) for _ in range(things_depth))
        self.cls_thing_branches = nn.ModuleList(nn.Linear(dim, num_things) for _ in range(things_depth))
        self.cls_stuff_branches = nn.ModuleList(nn.Linear(dim, 1) for _ in range(stuff_depth))
        self.things_mask_head = MaskDecoder(dim, depth=things_depth)
        self.stuff_mask_head = MaskDecoder(dim, depth=stuff_depth, self_attn=True)


class PanopticSegFormer(nn.Module):
    """ResNet-50 (C3..C5) -> ChannelMapper (4 levels, 256) -> PanformerHead; keys `backbone.`,
    `neck.`, `bbox_head.` as in the official checkpoints (51.3 M parameters).

    `forward(images)` takes RGB batches in 0..255 (normalised here with the ImageNet mean / std)
    and returns `infer`'s outputs; `panoptic(raw, sizes)` merges them into label maps.
    """

    def __init__(self, backbone: str = "resnet50", num_things: int = 80, num_stuff: int = 53,
                 num_queries: int = 300, max_per_img: int = 100, cat_ids=COCO_PANOPTIC_CAT_IDS,
                 label_divisor: int = 1000, pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375)):
        super().__init__()
        self.backbone = create_backbone(backbone, out_indices=(1, 2, 3))
        self.neck = ChannelMapper(self.backbone.feature_spec, 256, num_outs=4)
        self.bbox_head = PanformerHead(num_things, num_stuff, num_queries)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.max_per_img = max_per_img
        self.cat_ids = tuple(cat_ids)
        self.num_classes, self.num_things = num_things + num_stuff, num_things
        self.label_divisor = label_divisor

    def default_categories(self) -> list[dict]:
        """COCO panoptic categories by id (named `category<id>`; a preset's `classes` names them)."""
        return [{"id": c, "name": f"category{c}", "isthing": int(i < self.num_things)}
                for i, c in enumerate(self.cat_ids)]

    def forward(self, images: torch.Tensor) -> dict:
        return self.infer((images - self.pixel_mean) / self.pixel_std)

    def infer(self, x: torch.Tensor) -> dict:
        """Normalised images (B, 3, H, W) -> neck levels, encoder `memory`, location-decoder
        `cls` (L, B, Q, things) logits and `boxes` (L, B, Q, 4) sigmoid cxcywh, the top-100
        selection per image (`index`, `labels`, `scores`, `bboxes` xyxy in input pixels), thing and
        stuff masks (B, N, H8 * W8, ReLU outputs) and `stuff_scores` (B, S)."""
        head = self.bbox_head
        feats = self.neck(self.backbone(x))
        memory, shapes = head.transformer.encode(feats)
        states, references = head.transformer.decode(memory, shapes, head.query_embedding.weight,
                                                     head.reg_branches)
        cls = torch.stack([branch(s) for branch, s in zip(head.cls_branches, states)])
        boxes = torch.stack(references[1:])
        picks = [segformer_select_things(cls[-1, i], boxes[-1, i], x.shape[-2:], max_per_img=self.max_per_img)
                 for i in range(x.shape[0])]
        index = torch.stack([p[0] for p in picks])
        bboxes = torch.stack([p[1] for p in picks])
        mask_shapes = shapes[:3]
        mask_memory = memory[:, :sum(h * w for h, w in mask_shapes)]
        things = torch.gather(states[-1], 1, index[..., None].expand(-1, -1, states.shape[-1]))
        thing_masks, _ = head.things_mask_head(things, mask_memory, mask_shapes)
        stuff, stuff_pos = head.stuff_query.weight.split(head.stuff_query.weight.shape[1] // 2, 1)
        b = x.shape[0]
        stuff_masks, stuff_out = head.stuff_mask_head(stuff[None].expand(b, -1, -1), mask_memory, mask_shapes,
                                                      pos=stuff_pos[None].expand(b, -1, -1))
        return {"neck": feats, "memory": memory, "cls": cls, "boxes": boxes, "index": index,
                "labels": torch.stack([p[2] for p in picks]), "scores": bboxes[..., 4], "bboxes": bboxes[..., :4],
                "thing_masks": thing_masks, "stuff_masks": stuff_masks, "mask_shape": mask_shapes[0],
                "stuff_scores": head.cls_stuff_branches[-1](stuff_out)[..., 0].sigmoid()}

    @torch.no_grad()
    def merge(self, raw: dict, i: int, out_size: tuple[int, int]) -> torch.Tensor:
        """Mask-wise merging of image `i` at `out_size`: (H, W, 2) [COCO category id, instance]."""
        h8, w8 = raw["mask_shape"]
        return segformer_mask_merge(raw["scores"][i], raw["labels"][i], raw["thing_masks"][i].view(-1, h8, w8),
                                    raw["stuff_scores"][i], raw["stuff_masks"][i].view(-1, h8, w8), out_size,
                                    self.cat_ids)["panoptic"]

    @torch.no_grad()
    def panoptic(self, raw: dict, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """(H, W) label maps: contiguous class (index in `cat_ids`) * label_divisor + instance, void -1."""
        lookup = torch.full((max(self.cat_ids) + 1,), -1, dtype=torch.int64)
        lookup[list(self.cat_ids)] = torch.arange(len(self.cat_ids))
        out = []
        for i, size in enumerate(sizes):
            pan = self.merge(raw, i, size).cpu()
            cls = lookup[pan[..., 0]]
            out.append(torch.where(pan[..., 0] > 0, cls * self.label_divisor + pan[..., 1], -1))
        return out


@register_converter("panoptic_segformer")
def convert_panoptic_segformer(sd: dict) -> dict:
    """The official checkpoint keys are cvkit's; a DataParallel `module.` prefix is dropped."""
    return strip_prefix(sd, "module.")


def panoptic_segformer_r50(**kwargs) -> PanopticSegFormer:
    """Panoptic SegFormer R-50 (COCO: 80 things, 53 stuff; 48.0 / 49.6 PQ for the 12 / 24-epoch
    checkpoints, repo README)."""
    return PanopticSegFormer("resnet50", **kwargs)
