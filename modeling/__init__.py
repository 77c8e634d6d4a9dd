from .configuration_pixelgpt import PIXELGPT_PRESETS, PixelGPTConfig
from .modeling_pixelgpt import (
    PixelGPTForImageClassification,
    PixelGPTForImageGeneration,
    PixelGPTModel,
    PixelGPTPreTrainedModel,
)
from .pipeline_pixelgpt import PixelGPTPipeline
from .sampling_pixelgpt import PixelGPTStaticCache, SamplingOptions

__all__ = [
    "PIXELGPT_PRESETS",
    "PixelGPTConfig",
    "PixelGPTForImageClassification",
    "PixelGPTForImageGeneration",
    "PixelGPTModel",
    "PixelGPTPipeline",
    "PixelGPTPreTrainedModel",
    "PixelGPTStaticCache",
    "SamplingOptions",
]
