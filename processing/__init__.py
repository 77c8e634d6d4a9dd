from .image_processing_pixelgpt import PixelGPTImageProcessor

__all__ = ["PixelGPTImageProcessor"]
