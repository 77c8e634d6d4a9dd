"""Configuration of the PixelGPT image tokenizer: a convolutional autoencoder whose latent grid is quantized with
finite scalar quantization (FSQ), so that a PixelGPT can model images as a grid `downsample_factor` times smaller
per side than the pixels."""

import math

from transformers import PreTrainedConfig

DOWNSAMPLE_FACTORS = (2, 4, 8, 16)
MAX_CODEBOOK_SIZE = 2**16


class PixelGPTVQVAEConfig(PreTrainedConfig):
    r"""
    Configuration of a `PixelGPTVQVAE`.

    Args:
        image_size (`int`, defaults to 64):
            Side of the square training images, in pixels; a multiple of `downsample_factor`, 8 to 1024. The
            network is convolutional: `encode` takes any size divisible by the factor.
        num_channels (`int`, defaults to 3):
            Image channels (3: RGB).
        downsample_factor (`int`, defaults to 4):
            Pixels per token along each side: 2, 4, 8 or 16 (one stride-2 stage each). A 64x64 image is a 16x16
            token grid with 4, 8x8 with 8.
        base_channels (`int`, defaults to 32):
            Width of the full-resolution stage; each halving of the resolution doubles it, up to 4x. A multiple of
            8 (GroupNorm with 8 groups). 32 trains 64x64 images on a CPU; 64 to 128 suit a GPU and larger images.
        num_res_blocks (`int`, defaults to 1):
            Residual blocks per resolution stage, in the encoder and in the decoder.
        fsq_levels (`list[int]`, *optional*):
            Levels of each latent channel of finite scalar quantization; the codebook is every combination, so its
            size is their product. Defaults to `[8, 5, 5, 5]` (1,000 codes: the FSQ paper's choice for about 2^10).
            Each in [2, 64]; the product at most 65,536.
    """

    model_type = "pixelgpt_vqvae"
    base_config_key = "tokenizer_config"  # its key when a PixelGPTConfig carries it

    image_size: int = 64
    num_channels: int = 3
    downsample_factor: int = 4
    base_channels: int = 32
    num_res_blocks: int = 1
    fsq_levels: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.fsq_levels is None:
            self.fsq_levels = [8, 5, 5, 5]
        self.fsq_levels = list(self.fsq_levels) if isinstance(self.fsq_levels, (list, tuple)) else self.fsq_levels
        self.validate_architecture()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Raise ValueError, naming the accepted range, for a value no tokenizer can be built with."""

        def check(ok, message):
            if not ok:
                raise ValueError(message)

        for name in ("image_size", "num_channels", "downsample_factor", "base_channels", "num_res_blocks"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool), f"`{name}` must be an int, got {value!r}.")
        check(self.downsample_factor in DOWNSAMPLE_FACTORS,
              f"`downsample_factor` must be one of {DOWNSAMPLE_FACTORS}, got {self.downsample_factor}.")
        check(8 <= self.image_size <= 1024 and self.image_size % self.downsample_factor == 0,
              f"`image_size` must be in [8, 1024] and a multiple of `downsample_factor` ({self.downsample_factor}), "
              f"got {self.image_size}.")
        check(self.num_channels in (1, 3), f"`num_channels` must be 1 or 3, got {self.num_channels}.")
        check(self.base_channels >= 8 and self.base_channels % 8 == 0,
              f"`base_channels` must be a positive multiple of 8, got {self.base_channels}.")
        check(0 <= self.num_res_blocks <= 8, f"`num_res_blocks` must be in [0, 8], got {self.num_res_blocks}.")
        levels = self.fsq_levels
        check(isinstance(levels, list) and len(levels) >= 1 and all(
            isinstance(x, int) and not isinstance(x, bool) and 2 <= x <= 64 for x in levels),
            f"`fsq_levels` must be a non-empty list of ints in [2, 64], got {levels!r}.")
        check(math.prod(levels) <= MAX_CODEBOOK_SIZE,
              f"`fsq_levels` {levels} make {math.prod(levels)} codes; at most {MAX_CODEBOOK_SIZE} are allowed.")

    @property
    def codebook_size(self) -> int:
        """Distinct token ids: the product of `fsq_levels`."""
        return math.prod(self.fsq_levels)

    @property
    def grid_size(self) -> int:
        """Side of the token grid of an `image_size` image."""
        return self.image_size // self.downsample_factor

    @property
    def stage_channels(self) -> list[int]:
        """Width of each resolution stage, full resolution first: doubling per halving, capped at 4x."""
        stages = int(math.log2(self.downsample_factor))
        return [self.base_channels * min(2**i, 4) for i in range(stages + 1)]


PixelGPTVQVAEConfig.register_for_auto_class()

__all__ = ["DOWNSAMPLE_FACTORS", "MAX_CODEBOOK_SIZE", "PixelGPTVQVAEConfig"]
