"""PixelGPT's own key/value caches, for its sampling loops (`sampling_pixelgpt.py`): preallocated buffers that the
attention layers fill in place. Each cache also makes the attention mask of the rows a pass adds (`causal_mask`),
which the network asks it for instead of transformers' mask functions.
"""

import torch


class PixelGPTStaticCache:
    """Preallocated key/value buffers for PixelGPT's own sampling loop.

    `update` writes the new keys/values in place and returns views of the filled part, so attention only reads what
    exists (no padding mask, no re-allocation, no concatenation per step). The length advances once the last layer
    has written. Rows added together are causal among themselves, aligned to the end of the cache.
    """

    def __init__(self, config, batch_size: int, max_length: int, device, dtype):
        shape = (batch_size, config.num_attention_heads, max_length, config.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.length = 0
        self.max_length = max_length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int):
        end = self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"PixelGPTStaticCache holds {self.max_length} positions; {end} were asked for.")
        self.keys[layer_idx][:, :, self.length : end] = key
        self.values[layer_idx][:, :, self.length : end] = value
        keys, values = self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]  # (B, heads, end, hd)
        if layer_idx == len(self.keys) - 1:
            self.length = end
        return keys, values

    def causal_mask(self, num_new: int, attn_implementation: str):
        """None for one new row (it sees the whole cache); else an end-aligned causal mask for the new rows."""
        if num_new == 1:
            return None
        total = self.length + num_new
        allowed = torch.ones(num_new, total, dtype=torch.bool, device=self.keys[0].device).tril(self.length)
        if attn_implementation == "eager":
            return torch.zeros(allowed.shape, dtype=self.keys[0].dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(self.keys[0].dtype).min)[None, None]
        return allowed[None, None]  # (1, 1, new, total)


class PixelGPTRaggedCache(PixelGPTStaticCache):
    """A static cache in which every batch row has its own length, for the exact speculative loop: the rows of one
    batch accept different numbers of drafts, and each keeps only its accepted rows (`keep`).

    A pass writes its `m` new rows at each batch row's own end and attends, per batch row, to that row's filled
    slots and the new rows before it; slots past a row's length (rejected drafts, padding) are never seen and are
    overwritten by the next pass. Rows whose sequence is complete leave the batch (`retire`).
    """

    def __init__(self, config, batch_size: int, max_length: int, device, dtype):
        super().__init__(config, batch_size, max_length, device, dtype)
        # Masked slots still meet the softmax's zero weights: 0 * NaN is NaN, so unwritten slots must be finite.
        for buffer in self.keys + self.values:
            buffer.zero_()
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        # The longest row's length as a Python int, kept by `keep` outside the forward pass: a pass then reads no
        # tensor value to size its attention, so `torch.compile` compiles it without graph breaks.
        self.longest = 0
        self._slots = None  # (B, m): where this pass writes

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.longest

    def causal_mask(self, num_new: int, attn_implementation: str):
        self._slots = self.lengths[:, None] + torch.arange(num_new, device=self.lengths.device)  # (B, m)
        width = self.longest + num_new  # slots a pass attends over: the longest row plus its new rows
        if width > self.max_length:
            raise ValueError(f"PixelGPTRaggedCache holds {self.max_length} positions; {width} were asked for.")
        allowed = torch.arange(width, device=self.lengths.device) <= self._slots[..., None]  # (B, m, width)
        if attn_implementation == "eager":
            dtype = self.keys[0].dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)[:, None]
        return allowed[:, None]  # (B, 1, m, width)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int):
        # An indexed assignment, not `scatter_`: inductor compiles scatter_ into a buffer ~6x slower than eager
        # (234 against 37 us per write at 16 rows x 8 slots), index_put stays cheap (and is faster eager too).
        rows = torch.arange(key.shape[0], device=key.device)[:, None]  # (B, 1)
        self.keys[layer_idx][rows, :, self._slots] = key.transpose(1, 2)  # (B, m, heads, hd) at (b, :, slot)
        self.values[layer_idx][rows, :, self._slots] = value.transpose(1, 2)
        width = self.longest + key.shape[2]
        return self.keys[layer_idx][:, :, :width], self.values[layer_idx][:, :, :width]  # (B, heads, width, hd)

    def keep(self, counts: torch.LongTensor) -> None:
        """Make the first `counts[b]` rows of the last pass part of batch row b; the others are dropped."""
        self.lengths += counts
        self.longest = int(self.lengths.max())

    def retire(self, in_use: int, src: torch.LongTensor, dst: torch.LongTensor) -> None:
        """From now on use only the first `in_use` batch rows, after moving rows `src` (at or past `in_use`) into
        rows `dst` (before it, no longer needed). Cheaper than leaving finished rows in the batch: one copy of the
        rows that move, instead of every later pass computing them (in exact sampling, about a third of the rows a
        batch of 64 images computes belong to images already complete), and attention sized by the longest row
        still in use."""
        for buffer in self.keys + self.values:
            buffer[dst, :, : self.longest] = buffer[src, :, : self.longest]
        self.lengths[dst] = self.lengths[src]
        # Views of the first rows: a compiled pass keeps seeing buffers as long as its batch (torch.compile
        # specialises on that equality), so it is not compiled again when images leave.
        self.keys, self.values = [b[:in_use] for b in self.keys], [b[:in_use] for b in self.values]
        self.lengths = self.lengths[:in_use]
        self.longest = int(self.lengths.max()) if in_use else 0


__all__ = ["PixelGPTRaggedCache", "PixelGPTStaticCache"]
