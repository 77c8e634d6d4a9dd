from .configuration_pixelgpt import PIXELGPT_PRESETS, PixelGPTConfig
from .modeling_pixelgpt import (
    PixelGPTForImageClassification,
    PixelGPTForImageGeneration,
    PixelGPTModel,
    PixelGPTPreTrainedModel,
    PixelGPTStaticCache,
)
from .pipeline_pixelgpt import PixelGPTPipeline

__all__ = [
    "PIXELGPT_PRESETS",
    "PixelGPTConfig",
    "PixelGPTForImageClassification",
    "PixelGPTForImageGeneration",
    "PixelGPTModel",
    "PixelGPTPipeline",
    "PixelGPTPreTrainedModel",
    "PixelGPTStaticCache",
]
