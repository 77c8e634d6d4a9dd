from .image_processing_pixelgpt import PixelGPTImageProcessor
from .processing_pixelgpt import PixelGPTProcessor

__all__ = ["PixelGPTImageProcessor", "PixelGPTProcessor"]
