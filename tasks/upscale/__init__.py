"""Super-resolution: ESPCN, CFSR, SCNet-T and a MATLAB-compatible bicubic baseline."""
from .models import SR_MODELS, upscale_rgb
from .task import UpscaleTask

__all__ = ["SR_MODELS", "UpscaleTask", "upscale_rgb"]
