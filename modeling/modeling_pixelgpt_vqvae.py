"""PixelGPT image tokenizer: images <-> a grid of token ids `downsample_factor` times smaller per side.

    pixel_values (B, 3, H, W) in [-1, 1] -> encoder -> (B, d, h, w) -> FSQ -> ids (B, h, w) -> decoder -> (B, 3, H, W)

Why finite scalar quantization (Mentzer et al., 2023) and not the learned codebook of transformers' `JanusVQVAE`,
`ChameleonVQVAE` or `Emu3VQVAE`: those quantizers pick the nearest of K learned vectors and need a commitment loss
and care (re-initialisation, l2-normalised low-dimensional codes) to keep the codebook in use; trained from scratch
on a few thousand images, codes die. FSQ has no codebook to learn: each of `d` latent channels is bounded and
rounded to one of `L_i` levels, and a token id is the mixed-radix number of those digits. Every code stays
reachable, there is no auxiliary loss, and the straight-through rounding is the whole trick (~30 lines, so no
dependency: this file also travels to the Hub and must import nothing but transformers and torch). The networks
follow the VQGAN shape at a small scale: residual GroupNorm/SiLU conv blocks, stride-2 downsampling, nearest
upsampling, no attention (images here are 64 pixels, not 256).

The classes say "VQVAE", as transformers' own image tokenizers do, and never "Tokenizer": `save_pretrained` writes a
class whose name holds "Tokenizer" into `auto_map` as a (slow, fast) text-tokenizer pair, which remote loading
then cannot read.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_pixelgpt_vqvae import PixelGPTVQVAEConfig


@dataclass
class PixelGPTVQVAEOutput(ModelOutput):
    """
    loss (`torch.FloatTensor`, *optional*): L1 + MSE between reconstruction and input, when `return_loss`.
    reconstruction (`torch.FloatTensor` `(B, C, H, W)`): the decoded image, unclamped (targets are in [-1, 1]).
    token_ids (`torch.LongTensor` `(B, h, w)`): the token of each latent cell.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    token_ids: torch.LongTensor | None = None


class PixelGPTFiniteScalarQuantizer(nn.Module):
    """Bound each channel, round it to its levels (straight-through), and read the digits as one token id."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.level_list = list(levels)

    def _tables(self, device):
        """Per-channel constants, made where they are used (plain tensors, not buffers: nothing to load or lose)."""
        levels = torch.tensor(self.level_list, device=device)
        # Mixed radix: id = d_0 + L_0 * (d_1 + L_1 * (d_2 + ...)).
        basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)
        half_range = (levels.float() - 1) * (1 - 1e-3) / 2  # just inside, so rounding never reaches L levels + 1
        offset = (levels % 2 == 0).float() * 0.5  # an even L has no level at 0: shift the grid by half a step
        return levels, basis, half_range, offset, (levels // 2).float()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """`z` `(B, d, h, w)` -> (codes in [-1, 1] `(B, d, h, w)`, ids `(B, h, w)`)."""
        _, basis, half_range, offset, half_width = self._tables(z.device)
        z = z.float().movedim(1, -1)  # (B, h, w, d)
        bounded = torch.tanh(z + torch.atanh(offset / half_range)) * half_range - offset  # rounds to L values
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through: gradient of the identity
        digits = (rounded.detach().round() + half_width).long()  # (B, h, w, d) in [0, L)
        ids = (digits * basis).sum(-1)  # (B, h, w)
        return (rounded / half_width).movedim(-1, 1), ids

    def ids_to_codes(self, ids: torch.LongTensor) -> torch.Tensor:
        """`(B, h, w)` ids -> `(B, d, h, w)` codes in [-1, 1]."""
        levels, basis, _, _, half_width = self._tables(ids.device)
        digits = (ids.unsqueeze(-1) // basis) % levels  # (B, h, w, d)
        return ((digits.float() - half_width) / half_width).movedim(-1, 1)


class PixelGPTVQVAEResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class PixelGPTVQVAEEncoder(nn.Module):
    def __init__(self, config: PixelGPTVQVAEConfig):
        super().__init__()
        widths = config.stage_channels
        self.conv_in = nn.Conv2d(config.num_channels, widths[0], 3, padding=1)
        blocks = []
        for i, width in enumerate(widths):
            blocks += [PixelGPTVQVAEResBlock(width, width) for _ in range(config.num_res_blocks)]
            if i + 1 < len(widths):  # halve the resolution, widen
                blocks.append(nn.Conv2d(width, widths[i + 1], 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(8, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], len(config.fsq_levels), 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv_in(pixel_values))  # (B, C_last, h, w)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, d, h, w)


class PixelGPTVQVAEDecoder(nn.Module):
    def __init__(self, config: PixelGPTVQVAEConfig):
        super().__init__()
        widths = config.stage_channels[::-1]  # coarsest first
        self.conv_in = nn.Conv2d(len(config.fsq_levels), widths[0], 3, padding=1)
        blocks = []
        for i, width in enumerate(widths):
            blocks += [PixelGPTVQVAEResBlock(width, width) for _ in range(config.num_res_blocks)]
            if i + 1 < len(widths):  # double the resolution, narrow
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, widths[i + 1], 3, padding=1)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(8, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], config.num_channels, 3, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv_in(codes))  # (B, C_0, H, W)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 3, H, W)


class PixelGPTVQVAE(PreTrainedModel):
    """Image tokenizer: `encode(pixel_values) -> ids (B, h, w)`, `decode(ids) -> pixel_values (B, 3, H, W)`,
    pixel values in [-1, 1] (`PixelGPTVQVAE.to_pixel_values` makes them from uint8 images). `forward` returns
    the training loss."""

    config_class = PixelGPTVQVAEConfig
    config: PixelGPTVQVAEConfig
    main_input_name = "pixel_values"
    base_model_prefix = "tokenizer"

    def __init__(self, config: PixelGPTVQVAEConfig):
        super().__init__(config)
        self.encoder = PixelGPTVQVAEEncoder(config)
        self.quantizer = PixelGPTFiniteScalarQuantizer(config.fsq_levels)
        self.decoder = PixelGPTVQVAEDecoder(config)
        self.post_init()

    def _init_weights(self, module):
        # PyTorch's own default initialisation trains these conv stacks well; only the norms need their
        # weights set when transformers builds the model on the meta device.
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        factor, channels = self.config.downsample_factor, self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels or pixel_values.shape[2] % factor or \
                pixel_values.shape[3] % factor:
            raise ValueError(f"`pixel_values` must be (B, {channels}, H, W) with H and W multiples of "
                             f"{factor}, got shape {tuple(pixel_values.shape)}.")

    @staticmethod
    def to_pixel_values(images: torch.Tensor) -> torch.Tensor:
        """uint8 `(B, H, W, C)` (the image processor's `to_array`) -> float `(B, C, H, W)` in [-1, 1]."""
        return images.permute(0, 3, 1, 2).float() / 127.5 - 1

    @staticmethod
    def to_uint8(pixel_values: torch.Tensor) -> torch.Tensor:
        """float `(B, C, H, W)` in [-1, 1] -> uint8 `(B, H, W, C)`, rounded and clipped."""
        return ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def forward(self, pixel_values: torch.Tensor, return_loss: bool = True) -> PixelGPTVQVAEOutput:
        self._check_pixels(pixel_values)
        codes, ids = self.quantizer(self.encoder(pixel_values))  # (B, d, h, w), (B, h, w)
        reconstruction = self.decoder(codes.to(pixel_values.dtype))  # (B, C, H, W)
        loss = None
        if return_loss:
            # L1 keeps flat colours and edges sharp; MSE is what PSNR measures. Both, equally weighted.
            target = pixel_values.float()
            loss = F.l1_loss(reconstruction.float(), target) + F.mse_loss(reconstruction.float(), target)
        return PixelGPTVQVAEOutput(loss=loss, reconstruction=reconstruction, token_ids=ids)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """`(B, C, H, W)` in [-1, 1] -> token ids `(B, H / factor, W / factor)` in [0, codebook_size)."""
        self._check_pixels(pixel_values)
        weight = self.encoder.conv_in.weight
        return self.quantizer(self.encoder(pixel_values.to(weight.device, weight.dtype)))[1]

    @torch.no_grad()
    def decode(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Token ids `(B, h, w)` -> pixel values `(B, C, h * factor, w * factor)`, clamped to [-1, 1]."""
        if token_ids.ndim != 3:
            raise ValueError(f"`token_ids` must be (B, h, w), got shape {tuple(token_ids.shape)}.")
        if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() >= self.config.codebook_size):
            raise ValueError(f"token ids must be in [0, {self.config.codebook_size}), got values in "
                             f"[{int(token_ids.min())}, {int(token_ids.max())}].")
        weight = self.decoder.conv_in.weight
        codes = self.quantizer.ids_to_codes(token_ids.to(weight.device))
        return self.decoder(codes.to(weight.dtype)).clamp(-1, 1)


PixelGPTVQVAE.register_for_auto_class("AutoModel")

__all__ = ["PixelGPTVQVAE", "PixelGPTVQVAEOutput", "PixelGPTFiniteScalarQuantizer"]
