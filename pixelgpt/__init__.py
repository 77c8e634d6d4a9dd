"""PixelGPT: an autoregressive image transformer for transformers.

Importing the package registers PixelGPT with the Auto classes, so `AutoModel.from_pretrained(folder)` and
`AutoImageProcessor.from_pretrained(folder)` use the installed code; saved folders also carry the code for
`trust_remote_code=True` loading where the package is not installed. A text model's `PixelGPTProcessor` (image
processor and prompt tokenizer) loads with `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`, from
the code saved beside it: registering it here would make AutoProcessor look for a prompt tokenizer in every folder.

`task_inputs(config, input_ids)` lays a batch of processor ids out as a model of that config is trained on it (the
rows and positions `model(...)` reads, and the `labels`), for training loops of your own.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
)

from .modeling import (
    PIXELGPT_PRESETS,
    PixelGPTConfig,
    PixelGPTForImageClassification,
    PixelGPTForImageGeneration,
    PixelGPTModel,
    PixelGPTPipeline,
    PixelGPTPreTrainedModel,
    PixelGPTStaticCache,
    PixelGPTVQVAE,
    PixelGPTVQVAEConfig,
    SamplingOptions,
    task_inputs,
)
from .processing import PixelGPTImageProcessor, PixelGPTProcessor

__version__ = "0.1.0"

AutoConfig.register(PixelGPTConfig.model_type, PixelGPTConfig, exist_ok=True)
# The design makes AutoModel the generation class: `AutoModel.from_pretrained(repo)` is ready to draw images.
AutoModel.register(PixelGPTConfig, PixelGPTForImageGeneration, exist_ok=True)
AutoModelForCausalLM.register(PixelGPTConfig, PixelGPTForImageGeneration, exist_ok=True)
AutoModelForImageClassification.register(PixelGPTConfig, PixelGPTForImageClassification, exist_ok=True)
AutoImageProcessor.register(PixelGPTConfig, image_processor_classes={"pil": PixelGPTImageProcessor}, exist_ok=True)
# The image tokenizer (stage one of a model on tokens) has its own model type.
AutoConfig.register(PixelGPTVQVAEConfig.model_type, PixelGPTVQVAEConfig, exist_ok=True)
AutoModel.register(PixelGPTVQVAEConfig, PixelGPTVQVAE, exist_ok=True)
AutoImageProcessor.register(PixelGPTVQVAEConfig, image_processor_classes={"pil": PixelGPTImageProcessor},
                            exist_ok=True)

__all__ = [
    "PIXELGPT_PRESETS",
    "PixelGPTConfig",
    "PixelGPTForImageClassification",
    "PixelGPTForImageGeneration",
    "PixelGPTImageProcessor",
    "PixelGPTModel",
    "PixelGPTPipeline",
    "PixelGPTPreTrainedModel",
    "PixelGPTProcessor",
    "PixelGPTStaticCache",
    "PixelGPTVQVAE",
    "PixelGPTVQVAEConfig",
    "SamplingOptions",
    "task_inputs",
]
