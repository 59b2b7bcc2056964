"""Layers and helpers shared by backbones, necks and heads."""
from .flops import count_gflops, count_params
from .fusion import deploy, fold_bn, fuse_bn_linear, fuse_conv_bn
from .layers import DropPath, LayerNorm2d, drop_path_rates, make_divisible
from .spec import FeatureSpec

__all__ = ["FeatureSpec", "LayerNorm2d", "DropPath", "drop_path_rates", "make_divisible",
           "deploy", "fold_bn", "fuse_conv_bn", "fuse_bn_linear", "count_params", "count_gflops"]
