"""PixelGPT's positions: 2-D rotary embeddings of (row, column). A query is rotated by the position of the token it
predicts and a key by the position of the token it holds, so every attention score sees the offset between "the pixel
being drawn" and "a pixel already drawn" (the start token, and a text model's prompt, sit at pixel -1, just before the
first one). Condition pixels sit at the centre of the image pixels they cover.
"""

import torch
from torch import nn

from .configuration_pixelgpt import PixelGPTConfig


class PixelGPTRotaryEmbedding(nn.Module):
    """2-D rotary embedding: half of each head's rotation pairs turn with the row, the other half with the column."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__()
        self.quarter = config.head_dim // 4
        self.theta = config.rope_theta
        self.image_size = config.image_size
        self.tokens_per_pixel = config.tokens_per_pixel
        self._tables = {}  # (device, dtype) -> (cos, sin) of every token index, see `_pixel_cos_sin`

    def _cos_sin(self, row: torch.Tensor, col: torch.Tensor, dtype: torch.dtype):
        # Frequencies are recomputed each call (a handful of numbers) rather than kept in a non-persistent buffer,
        # which `from_pretrained` would leave uninitialised. Rows and columns may be fractional (condition pixels).
        inv_freq = self.theta ** (-torch.arange(self.quarter, device=row.device, dtype=torch.float32) / self.quarter)
        freqs = torch.cat([row[..., None] * inv_freq, col[..., None] * inv_freq], dim=-1)  # (..., T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (..., T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _pixel_cos_sin(self, token_index: torch.Tensor, dtype: torch.dtype):
        # Token indices of one model are few (start rows down to -64, k-ahead targets up to N + 63): their tables
        # are computed once per device and dtype and then looked up, which saves ~8% of a small model's sampling
        # step. A plain attribute, not a buffer: never saved, and rebuilt wherever the model moves.
        # A compiled graph computes its own (the table is not touched there: filling it would make the graph's
        # guards fail on the next call and compile it a second time).
        low, high = -64, self.image_size * self.image_size * self.tokens_per_pixel + 64
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or token_index.numel() == 0 or not (
                low <= int(token_index.min()) and int(token_index.max()) < high):
            return self._compute_cos_sin(token_index, dtype)
        key = (token_index.device, dtype)
        if key not in self._tables:
            self._tables[key] = self._compute_cos_sin(torch.arange(low, high, device=token_index.device), dtype)
        cos, sin = self._tables[key]
        return cos[token_index - low], sin[token_index - low]  # each (..., T, hd)

    def _compute_cos_sin(self, token_index: torch.Tensor, dtype: torch.dtype):
        pixel = torch.div(token_index, self.tokens_per_pixel, rounding_mode="floor")
        row = torch.div(pixel, self.image_size, rounding_mode="floor")
        return self._cos_sin(row.float(), (pixel - row * self.image_size).float(), dtype)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, input_positions: torch.LongTensor, target_positions: torch.LongTensor):
        """Positions are image-token indices (negative for start tokens): a query is rotated by the pixel of the
        token it predicts, a key by the pixel of the token it holds. Returns `(cos, sin)`, each `(2, B, T, hd)`:
        the query rotation first, then the key rotation, so that attention rotates both in one go."""
        positions = torch.stack(torch.broadcast_tensors(target_positions, input_positions))  # (2, B, T)
        return self._pixel_cos_sin(positions, x.dtype)

    @torch.no_grad()
    def condition(self, condition_size: int, device, dtype):
        """Rotation of a `condition_size`-square condition grid laid over the image grid, `(cos, sin)` each
        `(1, 1, C, hd)` (queries and keys alike): condition pixel (i, j) sits at the centre of the image pixels it
        covers, `(i + 0.5) * image_size / condition_size - 0.5`."""
        scale = self.image_size / condition_size
        centre = (torch.arange(condition_size, device=device, dtype=torch.float32) + 0.5) * scale - 0.5
        row = centre.repeat_interleave(condition_size)[None, None]  # (1, 1, C)
        col = centre.repeat(condition_size)[None, None]  # (1, 1, C)
        return self._cos_sin(row, col, dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `(..., B, heads, T, hd)` by `(..., B, T, hd)` tables (broadcast over heads)."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # (..., B, 1, T, hd)
    return x * cos + rotate_half(x) * sin


__all__ = ["PixelGPTRotaryEmbedding", "apply_rotary", "rotate_half"]
