"""Layers and helpers shared by backbones, necks and heads."""
from .flops import count_gflops, count_params
from .fusion import deploy, fold_bn, fuse_bn_linear, fuse_conv_bn
from .layers import DropPath, LayerNorm2d, drop_path_rates, make_divisible
from .spec import FeatureSpec

__all__ = [
           "DropPath",
           "FeatureSpec",
           "LayerNorm2d",
           "count_gflops",
           "count_params",
           "deploy",
           "drop_path_rates",
           "fold_bn",
           "fuse_bn_linear",
           "fuse_conv_bn",
           "make_divisible",
]
