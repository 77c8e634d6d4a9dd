from .cache_pixelgpt import PixelGPTStaticCache
from .configuration_pixelgpt import PIXELGPT_PRESETS, PixelGPTConfig
from .configuration_pixelgpt_vqvae import PixelGPTVQVAEConfig
from .layouts_pixelgpt import task_inputs
from .modeling_pixelgpt import (
    PixelGPTForImageClassification,
    PixelGPTForImageGeneration,
    PixelGPTModel,
    PixelGPTPreTrainedModel,
)
from .modeling_pixelgpt_vqvae import PixelGPTVQVAE
from .pipeline_pixelgpt import PixelGPTPipeline
from .sampling_pixelgpt import SamplingOptions

__all__ = [
    "PIXELGPT_PRESETS",
    "PixelGPTConfig",
    "PixelGPTForImageClassification",
    "PixelGPTForImageGeneration",
    "PixelGPTModel",
    "PixelGPTPipeline",
    "PixelGPTPreTrainedModel",
    "PixelGPTStaticCache",
    "PixelGPTVQVAE",
    "PixelGPTVQVAEConfig",
    "SamplingOptions",
    "task_inputs",
]
