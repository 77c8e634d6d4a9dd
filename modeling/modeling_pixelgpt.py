"""PixelGPT: a decoder-only transformer that models an image as a raster-order sequence of tokens.

Sequence layout: `[start, x_0, x_1, ..., x_{N-1}]`, where the start token is the unconditional `start_token_id` or
a class token, and `x_i` are image tokens from the image processor. Logits at sequence index t predict `x_t`.

Positions are 2-D rotary embeddings of (row, column). A query is rotated by the position of the token it predicts
and a key by the position of the token it holds, so every attention score sees the offset between "the pixel being
drawn" and "a pixel already drawn" (the start token sits at pixel -1, just before the first one). Tokens of the
same pixel (per-sub-pixel `rgb8`) share the position and are told apart by a learned channel embedding.
"""

import math
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_pixelgpt import PixelGPTConfig
from .pipeline_pixelgpt import PixelGPTPipeline  # imported so that remote code fetches the file, saved beside models

# The `pipeline()` tasks every saved model answers to (see pipeline_pixelgpt.py).
PIPELINE_TASKS = ("unconditional-image-generation", "image-to-image")

# transformers 5.24 renamed `past_key_values` to `cache` in model inputs, outputs and generate(); the forwards
# below take either name and return the cache under the installed version's name.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

# oneDNN ships inside PyTorch's CPU builds (x86 and ARM); its compiled graphs call this matmul op.
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _use_onednn(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether float32 CPU matmuls go through oneDNN here: not under autocast, tracing or `torch.compile`, nor with
    `torch.backends.mkldnn.flags(enabled=False)`."""
    return (device.type == "cpu" and dtype == torch.float32 and ONEDNN and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def _onednn_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b.T` for 2-D float32 CPU tensors through oneDNN; `b` may be a weight packed by `_pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def _pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight in oneDNN's blocked layout: no re-arrangement per call (1.3-1.6x faster sampling matmuls)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


class PixelGPTLinearFunction(torch.autograd.Function):
    """`x @ W.T` with autograd for `(M, in)` rows: the output and the input gradient through oneDNN, the weight
    gradient (a sum over all M rows) through `torch.mm`, which was as fast or faster for that shape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn_matmul(x, weight)  # (M, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = _onednn_matmul(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (M, in)
        grad_weight = grad.t() @ x if ctx.needs_input_grad[1] else None  # (out, in)
        return grad_x, grad_weight


class PixelGPTLinear(nn.Linear):
    """Bias-free `nn.Linear` (same weight, same state dict) whose float32 CPU matmuls run through oneDNN.

    PyTorch's float32 CPU matmul is MKL's sgemm, which can run far below the chip's peak on AMD CPUs: on our
    benchmark machine (AVX-512 EPYC) 216 GFLOP/s against oneDNN's 478 at 2048^2, and half oneDNN's speed at the
    8- to 64-row matmuls of sampling. Other devices and dtypes, autocast, tracing, `torch.compile` and one row
    against a small weight use `F.linear`, as does `torch.backends.mkldnn.flags(enabled=False)`. While a sampling
    loop runs, `packed` holds the weight in oneDNN's layout (see `PixelGPTForImageGeneration._packed_weights`).
    """

    packed: torch.Tensor | None = None

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A wrong input width goes to F.linear too, for PyTorch's own error message.
        if (x.dim() == 0 or x.shape[-1] != self.in_features or x.dtype != self.weight.dtype
                or not _use_onednn(x.device, x.dtype)):
            return F.linear(x, self.weight)
        num_rows = x.numel() // self.in_features
        # One row against a small weight (one image from a small model) is a matrix-vector product that stays in
        # cache: MKL's gemv beats oneDNN's ~10 us fixed cost per call there. Bigger products are faster in oneDNN
        # (measured at batch 1 with 128- and 256-wide models: 0.62 vs 0.92 and 3.2 vs 2.3 ms per token).
        if num_rows == 0 or (num_rows == 1 and self.weight.numel() < 2**17):
            return F.linear(x, self.weight)
        rows = x.reshape(-1, self.in_features)  # (M, in)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            out = PixelGPTLinearFunction.apply(rows, self.weight)
        else:
            out = _onednn_matmul(rows, self.weight if self.packed is None else self.packed)
        return out.view(*x.shape[:-1], self.out_features)  # (..., out)


class PixelGPTRotaryEmbedding(nn.Module):
    """2-D rotary embedding: half of each head's rotation pairs turn with the row, the other half with the column."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__()
        self.quarter = config.head_dim // 4
        self.theta = config.rope_theta
        self.image_size = config.image_size
        self.tokens_per_pixel = config.tokens_per_pixel

    def _cos_sin(self, row: torch.Tensor, col: torch.Tensor, dtype: torch.dtype):
        # Frequencies are recomputed each call (a handful of numbers) rather than kept in a non-persistent buffer,
        # which `from_pretrained` would leave uninitialised. Rows and columns may be fractional (condition pixels).
        inv_freq = self.theta ** (-torch.arange(self.quarter, device=row.device, dtype=torch.float32) / self.quarter)
        freqs = torch.cat([row[..., None] * inv_freq, col[..., None] * inv_freq], dim=-1)  # (..., T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (..., T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _pixel_cos_sin(self, token_index: torch.Tensor, dtype: torch.dtype):
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


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, heads, T, S)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    elif query.shape[2] > 1:
        # No mask given means plain causal attention, aligned to the end when a cache precedes the queries.
        q_len, k_len = query.shape[2], key.shape[2]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        attn_weights = attn_weights.masked_fill(~causal, torch.finfo(attn_weights.dtype).min)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, heads, hd)
    return attn_output, attn_weights


class PixelGPTAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection."""

    def __init__(self, config: PixelGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.qkv_proj = PixelGPTLinear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = PixelGPTLinear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, T, hd)
        # Queries and keys turn by different positions (see PixelGPTRotaryEmbedding) but in one set of ops.
        query, key = apply_rotary(qkv[:2], *position_embeddings).unbind(0)  # each (B, heads, T, hd)
        value = qkv[2]  # (B, heads, T, hd)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # (B, heads, S, hd), S = past + T

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )  # (B, T, heads, hd)
        attn_output = self.o_proj(attn_output.reshape(batch, seq_len, -1))  # (B, T, D)
        return attn_output, attn_weights


class PixelGPTMLP(nn.Module):
    """SwiGLU feed-forward with the gate and up projections fused into one matmul."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__()
        self.gate_up_proj = PixelGPTLinear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = PixelGPTLinear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # each (B, T, I)
        return self.down_proj(F.silu(gate) * up)


class PixelGPTDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: PixelGPTConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = PixelGPTAttention(config, layer_idx)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = PixelGPTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class PixelGPTStaticCache:
    """Preallocated key/value buffers for PixelGPT's own sampling loop.

    `update` writes the new keys/values in place and returns views of the filled part, so attention only reads what
    exists (no padding mask, no re-allocation, no concatenation per step). The length advances once the last layer
    has written. Rows added together are causal among themselves, aligned to the end of the cache.
    """

    def __init__(self, config: PixelGPTConfig, batch_size: int, max_length: int, device, dtype):
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


class PixelGPTPreTrainedModel(PreTrainedModel):
    config_class = PixelGPTConfig
    config: PixelGPTConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PixelGPTDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `AutoModel` is the generation class (its `_auto_class`); also name the task-specific Auto classes so a
        # saved folder loads as either head through remote code.
        module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModelForCausalLM", f"{module}.PixelGPTForImageGeneration")
        auto_map.setdefault("AutoModelForImageClassification", f"{module}.PixelGPTForImageClassification")
        self.config.auto_map = auto_map
        # `pipeline(task, model=folder, trust_remote_code=True)` finds its class through `custom_pipelines`.
        pipeline_file = Path(sys.modules[PixelGPTPipeline.__module__].__file__)
        entry = {"impl": f"{pipeline_file.stem}.PixelGPTPipeline", "pt": ["AutoModel"], "tf": [], "type": "image"}
        self.config.custom_pipelines = {task: dict(entry) for task in PIPELINE_TASKS}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if Path(save_directory, pipeline_file.name).resolve() != pipeline_file.resolve():
            shutil.copy(pipeline_file, save_directory)
        return result


class PixelGPTModel(PixelGPTPreTrainedModel):
    """The bare transformer: token ids in, final (normalised) hidden states out."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # Start tokens (unconditional + one per class) have their own table so that the image-token table keeps
        # exactly the output head's shape and can be tied to it.
        self.embed_start = nn.Embedding(config.num_start_tokens, config.hidden_size)
        # Which sub-pixel (R, G or B) the next token is; only needed when a pixel takes several tokens.
        self.channel_embed = nn.Embedding(config.tokens_per_pixel, config.hidden_size) if config.tokens_per_pixel > 1 else None
        # Conditional tasks read a condition image first, with its own token table.
        self.embed_condition = (nn.Embedding(config.condition_vocab_size, config.hidden_size)
                                if config.is_conditional else None)
        self.layers = nn.ModuleList(PixelGPTDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = PixelGPTRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        vocab = self.config.vocab_size
        is_image = (input_ids < vocab).unsqueeze(-1)  # (B, T, 1)
        image = self.embed_tokens(input_ids.clamp(max=vocab - 1))
        start = self.embed_start((input_ids - vocab).clamp(min=0))
        return torch.where(is_image, image, start)  # (B, T, D)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        input_positions: torch.LongTensor | None = None,
        target_positions: torch.LongTensor | None = None,
        condition_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        input_positions / target_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Image-token index held by each row (start rows: negative) and index of the token each row predicts.
            Default: raster order, `position_ids - 1` and `position_ids`. Other values give k-ahead prediction
            (row holds token j - k, predicts token j) for parallel decoding, or any generation order (row holds
            token `order[t - 1]`, predicts `order[t]`) for any-order models.
        condition_ids (`torch.LongTensor` of shape `(batch_size, condition_size**2)`, *optional*):
            Condition-image tokens (conditional tasks), placed before the rows of `input_ids`; the returned hidden
            states start with their rows. Pass them once: with a cache, later calls continue after them.
        cache (`Cache`, *optional*):
            The name transformers >= 5.24 gives `past_key_values`; either may be passed.
        """
        past_key_values = past_key_values if past_key_values is not None else cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a cache is useless in training and conflicts with recomputation
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)  # (B, T, D)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(past_seen, past_seen + inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = position_ids.unsqueeze(0)  # (1, T)
        if target_positions is None:  # raster order: sequence index t holds x_{t-1} (start: -1) and predicts x_t
            input_positions, target_positions = position_ids - 1, position_ids
        if self.channel_embed is not None:
            # Tell each row which sub-pixel (R, G or B) it predicts.
            inputs_embeds = inputs_embeds + self.channel_embed(target_positions % self.config.tokens_per_pixel)
        position_embeddings = self.rotary_emb(inputs_embeds, input_positions, target_positions)
        if condition_ids is not None:
            if self.embed_condition is None:
                raise ValueError(f"`condition_ids` were given, but this model (task {self.config.task!r}) was not "
                                 "trained with a condition image.")
            if condition_ids.shape[1] != self.config.num_condition_tokens:
                raise ValueError(f"`condition_ids` must have {self.config.num_condition_tokens} tokens per image "
                                 f"({self.config.condition_size}^2), got shape {tuple(condition_ids.shape)}.")
            batch = inputs_embeds.shape[0]
            inputs_embeds = torch.cat([self.embed_condition(condition_ids), inputs_embeds], dim=1)  # (B, C + T, D)
            condition = self.rotary_emb.condition(self.config.condition_size, inputs_embeds.device, inputs_embeds.dtype)
            position_embeddings = tuple(
                torch.cat([c.expand(2, batch, -1, -1), x.expand(2, batch, -1, -1)], dim=2)
                for c, x in zip(condition, position_embeddings)
            )  # each (2, B, C + T, hd)
            position_ids = None  # positions of the image rows only; the mask needs no packing hints

        if isinstance(past_key_values, PixelGPTStaticCache):
            causal_mask = past_key_values.causal_mask(inputs_embeds.shape[1], self.config._attn_implementation)
        else:
            # The cache goes fourth, by position: its keyword is `past_key_values` before transformers 5.24, then `cache`.
            causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, past_key_values,
                                             position_ids=position_ids)
        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=causal_mask,
                past_key_values=past_key_values if use_cache else None,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            **{CACHE_NAME: past_key_values if use_cache else None},
        )


class PixelGPTForImageGeneration(PixelGPTPreTrainedModel, GenerationMixin):
    """PixelGPT with a next-token head over image tokens: training loss, `generate()` and `generate_images()`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PixelGPTConfig):
        super().__init__(config)
        self.model = PixelGPTModel(config)
        self.lm_head = PixelGPTLinear(config.hidden_size, config.vocab_size)
        self.image_processor = None  # set by the user, or loaded on first `generate_images` from `name_or_path`
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        input_positions: torch.LongTensor | None = None,
        target_positions: torch.LongTensor | None = None,
        condition_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Usually the `input_ids` themselves. The shift happens here: logits at index t are scored against
            `labels[:, t + 1]`, so `labels[:, 0]` (the start token) is never a target. Use -100 to ignore a position.
            `loss` is the mean cross-entropy in nats per scored token.
        input_positions / target_positions: see `PixelGPTModel.forward` (k-ahead prediction for parallel decoding,
            any generation order). With explicit `target_positions` there is no shift: `labels[:, t]` is the token
            row t predicts.
        condition_ids: condition-image tokens of conditional models (see `PixelGPTModel.forward`). Their rows
            predict nothing: `logits` and `labels` cover the rows of `input_ids` only.
        cache: the name transformers >= 5.24 gives `past_key_values`; either may be passed.
        """
        past_key_values = past_key_values if past_key_values is not None else cache
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            input_positions=input_positions,
            target_positions=target_positions,
            condition_ids=condition_ids,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if condition_ids is not None:
            hidden_states = hidden_states[:, condition_ids.shape[1] :]  # (B, T, D): drop the condition rows
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep])  # (B, T_kept, V)

        loss = None
        if labels is not None:
            if target_positions is None:  # raster layout: logits at t are scored against labels[:, t + 1]
                logits_scored, labels = logits[:, :-1], labels[:, 1:]
            else:  # explicit targets: row t predicts labels[:, t]
                logits_scored = logits
            loss = F.cross_entropy(
                logits_scored.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def _resolve_image_processor(self, image_processor):
        processor = image_processor or self.image_processor
        if processor is None:
            source = self.config._name_or_path
            if not source:
                raise ValueError(
                    "No image processor to turn tokens into images: pass `image_processor=` (a "
                    "PixelGPTImageProcessor) or set `model.image_processor`, or load the model with from_pretrained "
                    "from a folder/repo that holds a preprocessor_config.json."
                )
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=True)
            self.image_processor = processor
        names = ("vocab_size", "tokens_per_pixel", "image_size", "condition_vocab_size", "condition_size")
        expected = tuple(getattr(self.config, name) for name in names)
        found = tuple(getattr(processor, name) for name in names)
        if found != expected:
            raise ValueError(f"Image processor does not match the model: {names} is {found} for the processor and "
                             f"{expected} for the model.")
        return processor

    def k_ahead_inputs(self, input_ids: torch.LongTensor, k: int) -> dict:
        """Inputs for k-ahead training or scoring from `(B, 1 + N)` processor ids: row t holds token t - k (the first
        k rows are start tokens at positions -k..-1) and predicts token t. k = 1 is the usual raster model."""
        batch, n = input_ids.shape[0], input_ids.shape[1] - 1
        rows = torch.cat([input_ids[:, :1].expand(batch, k), input_ids[:, 1 : 1 + n - k]], dim=1)  # (B, N)
        targets = torch.arange(n, device=input_ids.device).expand(batch, n)
        return dict(input_ids=rows, input_positions=targets - k, target_positions=targets, labels=input_ids[:, 1:])

    @staticmethod
    def _draw(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
              as_generate: bool = True) -> torch.LongTensor:
        """Sample one token per row of `(B, m, V)` logits. Mirrors generate()'s temperature -> top-k -> top-p
        warpers and, with `as_generate`, its `torch.multinomial` draw, so both paths give the same tokens under the
        same seed. Without it (k-ahead decoding, which generate() cannot do) the draw inverts the cumulative
        distribution with one uniform number per token: the same distribution, for a fraction of the cost of
        multinomial, which draws an exponential number per vocabulary entry (~5% of a k = 8 pass on CPU)."""
        scores = logits.float()
        if temperature == 0:
            return scores.argmax(-1)
        if temperature != 1.0:
            scores = scores / temperature
        if top_k:
            kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if top_p is not None and top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
            remove[..., -1:] = False  # always keep the most likely token
            scores = scores.masked_fill(remove.scatter(-1, order, remove), -float("inf"))
        probs = scores.softmax(-1)
        if as_generate:
            return torch.multinomial(probs.flatten(0, -2), 1).view(probs.shape[:-1])
        cdf = probs.cumsum(-1)  # (B, m, V), non-decreasing
        total = cdf[..., -1:]
        # u in [0, total): the first entry of the cdf above u is a token of non-zero probability.
        u = torch.minimum(torch.rand(total.shape, device=cdf.device) * total, total.nextafter(torch.zeros_like(total)))
        return torch.searchsorted(cdf, u, right=True).squeeze(-1)

    @torch.no_grad()
    def sample_tokens(
        self,
        start_ids: torch.LongTensor,
        tokens_per_step: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        progress=None,
        prefix: torch.LongTensor | None = None,
        guidance_scale: float = 1.0,
        known: torch.LongTensor | None = None,
        order: torch.LongTensor | None = None,
        condition_ids: torch.LongTensor | None = None,
    ) -> torch.LongTensor:
        """PixelGPT's own sampling loop: static KV cache, one forward pass per `tokens_per_step` tokens.

        Args:
            start_ids: `(B,)` start or class tokens.
            tokens_per_step: k tokens per pass; k > 1 feeds the k tokens drawn last and predicts the next k
                (k-ahead, for models trained with `parallel_tokens=k`; raster order only).
            prefix: `(B, P)` known first image tokens (raster order) to continue from; they are kept as given.
            guidance_scale: classifier-free guidance for class tokens: the unconditional branch (start token
                `start_token_id`) runs in the same batch and the next-token log-probabilities become
                `uncond + guidance_scale * (cond - uncond)`, as generate()'s `guidance_scale`.
            known: `(B, N)` image tokens in raster index, -1 where a token is to be drawn; known tokens are kept.
            order: `(B, N)` generation order (a permutation of token indices) for any-order models; default
                raster. Put the known tokens first: the leading known tokens of every row are read in one pass.
            condition_ids: `(B, condition_size**2)` condition-image tokens for conditional models.

        Returns `(B, 1 + N)`: the start tokens, then the image tokens in raster order.
        """
        n, k, device = self.config.num_image_tokens, tokens_per_step, start_ids.device
        batch = start_ids.shape[0]
        if order is None:
            order = torch.arange(n, device=device).expand(batch, n)
        elif k != 1:
            raise ValueError("tokens_per_step > 1 (k-ahead decoding) works in raster order only.")
        if known is None:
            known = torch.full((batch, n), -1, dtype=torch.long, device=device)
        if prefix is not None:
            known = known.clone()
            known[:, : prefix.shape[1]] = prefix
        known_seq = known.gather(1, order)  # (B, N): in generation order, -1 = to draw
        seq = known_seq.clamp(min=0)
        done = self._leading_known(known_seq)  # all rows read their first `done` tokens in one pass
        guided = guidance_scale != 1.0
        starts = start_ids
        if guided:  # conditional rows first, then the same rows with the unconditional start token
            if condition_ids is not None:
                raise ValueError("Classifier-free guidance is for class labels, not condition images.")
            starts = torch.cat([start_ids, torch.full_like(start_ids, self.config.start_token_id)])
        num_condition = 0 if condition_ids is None else condition_ids.shape[1]
        # Inference mode skips autograd's per-op bookkeeping (~5% of a pass on CPU); the tensors returned are
        # made after it, so callers get ordinary tensors.
        with torch.inference_mode(), self._packed_weights():
            cache = PixelGPTStaticCache(self.config, starts.shape[0], num_condition + k + n, device, self.dtype)
            cached = -k  # the cache holds the rows of sequence indices [-k, cached); negative indices are start rows
            while done < n:
                m = min(k, n - done)
                index = torch.arange(cached, done + m - k, device=device)  # rows still missing: sequence indices held
                safe = index.clamp(min=0)
                ids = torch.where(index < 0, start_ids[:, None], seq[:, safe])  # (B, rows)
                held = torch.where(index < 0, index, order[:, safe])  # (B, rows): token index held (start: negative)
                predicted = order[:, index + k]  # (B, rows): token index predicted
                if guided:
                    ids = torch.cat([ids, torch.where(index < 0, starts[batch:, None], ids)])  # (2B, rows)
                    held, predicted = held.repeat(2, 1), predicted.repeat(2, 1)
                logits = self(input_ids=ids, past_key_values=cache, use_cache=True, input_positions=held,
                              target_positions=predicted,
                              condition_ids=condition_ids if cached == -k else None).logits[:, -m:]  # (B', m, V)
                if guided:
                    cond, uncond = logits[:batch].float().log_softmax(-1), logits[batch:].float().log_softmax(-1)
                    logits = uncond + guidance_scale * (cond - uncond)
                drawn = self._draw(logits, temperature, top_k, top_p, as_generate=k == 1)  # (B, m)
                given = known_seq[:, done : done + m]
                seq[:, done : done + m] = torch.where(given >= 0, given, drawn)
                cached, done = done + m - k, done + m
                if progress is not None:
                    progress.update(m * batch)  # the bar counts image tokens
        tokens = torch.empty_like(seq).scatter_(1, order, seq)  # back to raster order
        return torch.cat([start_ids[:, None], tokens], dim=1)

    @contextmanager
    def _packed_weights(self):
        """For one sampling loop on CPU in float32, every PixelGPTLinear reads its weight pre-arranged in oneDNN's
        layout (packing all weights of a 256-wide, 8-layer model takes ~15 ms); released afterwards."""
        linears = []
        if _use_onednn(self.device, self.dtype):
            linears = [module for module in self.modules() if isinstance(module, PixelGPTLinear)]
        try:
            for module in linears:
                module.packed = _pack_weight(module.weight)
            yield
        finally:
            for module in linears:
                module.packed = None

    @staticmethod
    def _leading_known(known_seq: torch.LongTensor) -> int:
        """How many tokens at the start of the generation order are known in every row."""
        return int((known_seq >= 0).long().cumprod(dim=1).sum(dim=1).min()) if known_seq.numel() else 0

    # ------------------------------------------------------------------------------------------ any-order models
    def random_orders(self, last: torch.BoolTensor, generator: torch.Generator | None = None) -> torch.LongTensor:
        """Random generation orders, `(B, N)` token indices, from a `(B, pixels)` mask: pixels where `last` is False
        come first, then those where it is True, each group in random order. A pixel's sub-pixel tokens stay
        together in R, G, B order."""
        noise = torch.rand(last.shape, generator=generator, device=last.device)
        pixels = (noise + last.float()).argsort(dim=1)  # (B, P)
        t = self.config.tokens_per_pixel
        return (pixels[..., None] * t + torch.arange(t, device=last.device)).flatten(1)  # (B, N)

    def random_boxes(self, batch: int, probability: float, generator: torch.Generator | None = None,
                     device=None) -> torch.BoolTensor:
        """`(batch, pixels)` masks: with `probability` a random rectangle (sides 1..image_size), else empty."""
        size = self.config.image_size

        def draw(high):  # uniform integers in [0, high) per row
            return (torch.rand(batch, generator=generator, device=device) * high).long()

        height, width = draw(size) + 1, draw(size) + 1
        top, left = draw(size - height + 1), draw(size - width + 1)
        used = torch.rand(batch, generator=generator, device=device) < probability
        grid = torch.arange(size, device=device)
        rows = (grid >= top[:, None]) & (grid < (top + height)[:, None])  # (B, S)
        cols = (grid >= left[:, None]) & (grid < (left + width)[:, None])  # (B, S)
        return (rows[:, :, None] & cols[:, None, :] & used[:, None, None]).flatten(1)  # (B, S*S)

    def any_order_inputs(self, input_ids: torch.LongTensor, box_probability: float = 0.5,
                         generator: torch.Generator | None = None, order: torch.LongTensor | None = None) -> dict:
        """Inputs for any-order training or scoring from `(B, 1 + N)` processor ids. Each image gets a random
        generation order (or the given `(B, N)` `order`); with `box_probability` a random rectangle comes last (the
        shape inpainting masks take). Row 0 holds the start token and predicts token `order[0]`; row t holds
        `order[t - 1]` and predicts `order[t]`: the query knows which pixel it draws (target-position queries), so
        any set of known pixels, on any side, can condition any other."""
        batch = input_ids.shape[0]
        if order is None:
            order = self.random_orders(self.random_boxes(batch, box_probability, generator, input_ids.device),
                                       generator)  # (B, N)
        tokens = input_ids[:, 1:].gather(1, order)  # (B, N) in generation order
        start = torch.full((batch, 1), -1, dtype=torch.long, device=input_ids.device)
        return dict(input_ids=torch.cat([input_ids[:, :1], tokens[:, :-1]], dim=1),
                    input_positions=torch.cat([start, order[:, :-1]], dim=1), target_positions=order, labels=tokens)

    @torch.no_grad()
    def score_images(self, images, mask_image=None, condition_images=None, class_labels=None,
                     generator: torch.Generator | None = None, batch_size: int = 16,
                     image_processor=None) -> torch.Tensor:
        """Negative log-likelihood of each image under the model, in bits per token: `(B,)` float tensor.

        With `mask_image` (as in `inpaint_images`) only the masked pixels are scored: an inpainting model reads
        every other pixel first (in an order drawn from `generator`), a raster model only the pixels before each
        one in raster order. Conditional models score images given `condition_images` (for colorize / upscale
        models, the images themselves by default: their grayscale / low-resolution version)."""
        processor = self._resolve_image_processor(image_processor)
        self._check_count("batch_size", batch_size)
        ids = processor(images, return_tensors="pt").input_ids  # (B, 1 + N)
        if class_labels is not None:
            ids[:, 0] = torch.tensor(self._input_start_ids(class_labels, len(ids), 1))
        scored = torch.ones(len(ids), self.config.image_size, self.config.image_size, dtype=torch.bool)
        if mask_image is not None:
            scored = torch.from_numpy(processor.prepare_mask(mask_image, images))
        scored = self._token_mask(scored)  # (B, N)
        condition = None
        if self.config.is_conditional:
            if condition_images is None and self.config.task == "translate":
                raise ValueError("A translation model scores targets given their sources: pass `condition_images`.")
            source = images if condition_images is None else condition_images
            condition = processor.encode_condition(source, return_tensors="pt").condition_ids
            if len(condition) != len(ids):
                raise ValueError(f"Give one condition image per image: {len(ids)} images, {len(condition)} "
                                 "condition images.")
        elif condition_images is not None:
            raise ValueError(f"`condition_images` are for conditional models; this one's task is {self.config.task!r}.")
        bits = []
        for i in range(0, len(ids), batch_size):
            part, mask = ids[i : i + batch_size].to(self.device), scored[i : i + batch_size].to(self.device)
            cond = None if condition is None else condition[i : i + batch_size].to(self.device)
            if self.config.task == "inpaint":  # the scored pixels last, so that they see every other pixel
                pixels = mask.view(len(mask), -1, self.config.tokens_per_pixel)[..., 0]
                order = self.random_orders(pixels, generator)
                inputs = self.any_order_inputs(part, order=order)
                mask = mask.gather(1, order)
            else:
                inputs = self.k_ahead_inputs(part, 1)
            labels = inputs.pop("labels")
            logits = self(**inputs, condition_ids=cond, use_cache=False).logits  # (b, N, V)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view_as(labels)
            bits.append(((nll * mask).sum(1) / mask.sum(1).clamp(min=1) / math.log(2)).cpu())
        return torch.cat(bits)

    # ------------------------------------------------------------------------------------------ checks and batching
    def _check_sampling(self, batch_size, temperature, top_k, top_p, tokens_per_step, guidance_scale, class_labels,
                        output_type, use_generate, generate_kwargs):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 = greedy), got {temperature}.")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"`top_k` must be a non-negative int or None, got {top_k!r}.")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
        if output_type not in ("pil", "tokens"):
            raise ValueError(f"`output_type` must be 'pil' or 'tokens', got {output_type!r}.")
        allowed_steps = sorted({1, self.config.parallel_tokens})
        if tokens_per_step not in allowed_steps:
            raise ValueError(f"`tokens_per_step` must be one of {allowed_steps} for this model (it was trained with "
                             f"parallel_tokens={self.config.parallel_tokens}), got {tokens_per_step!r}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0 (1 = no guidance), got {guidance_scale}.")
        if guidance_scale != 1.0 and (class_labels is None or not self.config.num_classes):
            raise ValueError("`guidance_scale` guides towards class labels: it needs `class_labels` and a "
                             "class-conditional model (trained with --class_conditional).")
        if use_generate and tokens_per_step != 1:
            raise ValueError("`use_generate=True` draws one token per pass; use tokens_per_step=1.")
        if use_generate and self.config.task != "generate":
            raise ValueError(f"`use_generate=True` samples in raster order without a condition image; this model's "
                             f"task is {self.config.task!r}. Use the default sampling loop.")
        if generate_kwargs and not use_generate:
            raise ValueError(f"{sorted(generate_kwargs)} are generate() arguments; pass use_generate=True.")

    def _require_task(self, method: str, *tasks: str):
        if self.config.task not in tasks:
            flags = " or ".join(f"--task {t}" for t in tasks)
            raise ValueError(f"`{method}` needs a model trained for {' or '.join(map(repr, tasks))}; this one was "
                             f"trained for task {self.config.task!r}. Train one with `examples/train.py {flags}`.")

    def _start_ids(self, class_labels, repeats: int) -> list[int]:
        """One start token per output image: unconditional, or each class label `repeats` times."""
        if class_labels is None:
            return [self.config.start_token_id] * repeats
        labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
        return [self.config.class_token_id(int(c)) for c in labels for _ in range(repeats)]

    def _input_start_ids(self, class_labels, num_inputs: int, repeats: int) -> list[int]:
        """Start tokens for `num_inputs` input images drawn `repeats` times each: one class label per input."""
        if class_labels is None:
            return [self.config.start_token_id] * (num_inputs * repeats)
        labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
        if len(labels) != num_inputs:
            raise ValueError(f"Give one class label per input image: {num_inputs} images, {len(labels)} labels.")
        return self._start_ids(labels, repeats)

    def _run_batches(self, start_ids, generator, batch_size, show_progress, use_generate, tokens_per_step,
                     temperature, top_k, top_p, guidance_scale, generate_kwargs, known=None,
                     condition_ids=None) -> torch.LongTensor:
        """Sample `len(start_ids)` images in batches. `known` `(B, N)`: tokens to keep (-1: draw). Any-order
        models draw their order (known pixels first) from the seeded generator."""
        device, n = self.device, self.config.num_image_tokens
        seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        start_ids = torch.tensor(start_ids, device=device)
        if known is None:
            known = torch.full((len(start_ids), n), -1, dtype=torch.long)
        if use_generate and self._leading_known(known) != int((known >= 0).sum(1).max()):
            raise ValueError("`use_generate=True` continues a raster prefix only; keep whole top rows.")
        bar = tqdm(total=int((known < 0).sum()), desc="Sampling", unit="tok", disable=not show_progress)
        outputs = []
        # Both paths draw from torch's global generator: fork it so that a `generator` gives reproducible images
        # without disturbing the caller's global random state.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(0, len(start_ids), batch_size):
                start = start_ids[i : i + batch_size]
                part = known[i : i + batch_size].to(device)
                order = None
                if self.config.task == "inpaint":  # known pixels first, the rest in a random order
                    pixels = part.view(len(part), -1, self.config.tokens_per_pixel)[..., 0]
                    order = self.random_orders(pixels < 0)
                condition = None if condition_ids is None else condition_ids[i : i + batch_size].to(device)
                if use_generate:
                    prefix = part[:, : self._leading_known(part)]
                    out = self._generate_reference(start, prefix if prefix.shape[1] else None, temperature, top_k,
                                                   top_p, guidance_scale, bar, **generate_kwargs)
                else:
                    out = self.sample_tokens(start, tokens_per_step, temperature, top_k, top_p, progress=bar,
                                             guidance_scale=guidance_scale, known=part, order=order,
                                             condition_ids=condition)
                outputs.append(out.cpu())  # (b, 1 + N)
        bar.close()
        return torch.cat(outputs)

    def _sample_images(self, start_ids, known=None, condition_ids=None, *, class_labels=None, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                batch_size: int = 16, tokens_per_step: int = 1, guidance_scale: float = 1.0,
                show_progress: bool = True, use_generate: bool = False, output_type: str = "pil",
                **generate_kwargs) -> torch.LongTensor:
        """Checks the sampling arguments shared by every public method, then samples `(B, 1 + N)` tokens."""
        self._check_sampling(batch_size, temperature, top_k, top_p, tokens_per_step, guidance_scale, class_labels,
                             output_type, use_generate, generate_kwargs)
        return self._run_batches(start_ids, generator, batch_size, show_progress, use_generate, tokens_per_step,
                                 temperature, top_k, top_p, guidance_scale, generate_kwargs, known, condition_ids)

    def _encode(self, images, processor, repeats: int = 1) -> torch.LongTensor:
        """Processor tokens of `images`, each repeated `repeats` times: `(B * repeats, N)`."""
        return processor(images, return_tensors="pt").input_ids[:, 1:].repeat_interleave(repeats, dim=0)

    @staticmethod
    def _check_count(name: str, value) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")

    # ------------------------------------------------------------------------------------------ public methods
    @torch.no_grad()
    def generate_images(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        tokens_per_step: int = 1,
        guidance_scale: float = 1.0,
        image_processor=None,
        output_type: str = "pil",
        show_progress: bool = True,
        use_generate: bool = False,
        **generate_kwargs,
    ):
        """Sample images and decode them.

        Args:
            num_images: how many images to draw (per class label, when `class_labels` is a list).
            class_labels: a class id or list of ids for a class-conditional model; None draws unconditionally.
            temperature: softmax temperature; 0 means greedy (argmax) decoding.
            top_k / top_p: optional top-k and nucleus filtering (None or 0 / 1.0 disable them).
            generator: a `torch.Generator`; the same generator state gives the same images.
            batch_size: images sampled together (with a fixed `generator`, a different batch size draws different
                images).
            tokens_per_step: tokens drawn per forward pass: 1, or the model's `parallel_tokens` (parallel decoding,
                `parallel_tokens` times fewer passes at some cost in quality).
            guidance_scale: classifier-free guidance towards `class_labels` (1 = none; > 1 stronger); the model
                must be class-conditional, trained with class dropout.
            image_processor: the `PixelGPTImageProcessor` that decodes tokens; defaults to `model.image_processor`
                or the one saved beside the model.
            output_type: "pil" (list of `PIL.Image`) or "tokens" (`LongTensor` of shape (num_images, N + 1)).
            show_progress: show a tqdm bar over sampled tokens.
            use_generate: sample through transformers' `generate()` (the reference path, one token per pass)
                instead of PixelGPT's static-cache loop; both give the same tokens under the same generator.
            generate_kwargs: passed on to `generate()` (only with `use_generate=True`).

        The other methods (`complete_images`, `inpaint_images`, `outpaint_images`, `vary_images`,
        `colorize_images`, `upscale_images`, `translate_images`) take the same sampling arguments.
        """
        self._check_count("num_images", num_images)
        if self.config.is_conditional:
            raise ValueError(f"This model draws from a condition image (task {self.config.task!r}); use "
                             f"`{self.config.task}_images(images)`.")
        processor = self._resolve_image_processor(image_processor) if output_type == "pil" else None
        tokens = self._sample_images(self._start_ids(class_labels, num_images), class_labels=class_labels,
                              temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                              batch_size=batch_size, tokens_per_step=tokens_per_step, guidance_scale=guidance_scale,
                              show_progress=show_progress, use_generate=use_generate, output_type=output_type,
                              **generate_kwargs)
        return tokens if output_type == "tokens" else processor.decode(tokens)

    @torch.no_grad()
    def complete_images(self, images, keep_rows: int, num_completions: int = 1, class_labels=None,
                        image_processor=None, **sampling):
        """Keep the top `keep_rows` pixel rows of each image and sample the rest, `num_completions` times each.

        `images` are anything the image processor takes (one image or a batch); the output holds
        `len(images) * num_completions` images, the completions of the first input first. The kept rows come back
        exactly as the processor quantized them (pixel for pixel the input in lossless modes). `class_labels` (one
        per input, for class-conditional models) and the sampling arguments (`temperature`, `top_k`, `top_p`,
        `generator`, `batch_size`, `tokens_per_step`, `guidance_scale`, `output_type`, `show_progress`,
        `use_generate`) are as in `generate_images`. Raster models see only the rows above what they draw;
        inpainting models (task "inpaint") draw the rest in a random order.
        """
        self._require_task("complete_images", "generate", "inpaint")
        processor = self._resolve_image_processor(image_processor)
        if not isinstance(keep_rows, int) or not 0 <= keep_rows <= self.config.image_size:
            raise ValueError(f"`keep_rows` must be an int in [0, {self.config.image_size}] (the image height), "
                             f"got {keep_rows!r}.")
        self._check_count("num_completions", num_completions)
        known = self._encode(images, processor, num_completions)  # (B, N)
        known[:, keep_rows * self.config.image_size * self.config.tokens_per_pixel :] = -1
        start_ids = self._input_start_ids(class_labels, len(known) // num_completions, num_completions)
        tokens = self._sample_images(start_ids, known, class_labels=class_labels, **sampling)
        return self._output(tokens, processor, sampling)

    @torch.no_grad()
    def inpaint_images(self, images, mask_image, num_samples: int = 1, class_labels=None, image_processor=None,
                       **sampling):
        """Redraw the masked pixels of each image, `num_samples` times each, using the pixels on every side.

        `mask_image`: one mask for all images or one per image: PIL (white = redraw, black = keep, as diffusers),
        or a boolean/0-1 array, at the model's grid size or at the image's own size (then resized and cropped as
        the image). Pixels outside the mask come back as the processor quantized them. Needs a model trained with
        `--task inpaint`: it reads every kept pixel first, then draws the masked ones in a random order. Sampling
        arguments as in `generate_images`.
        """
        self._require_task("inpaint_images", "inpaint")
        processor = self._resolve_image_processor(image_processor)
        self._check_count("num_samples", num_samples)
        known = self._encode(images, processor)  # (B, N)
        masks = torch.from_numpy(processor.prepare_mask(mask_image, images))  # (B, S, S) True = redraw
        known = known.masked_fill(self._token_mask(masks), -1).repeat_interleave(num_samples, dim=0)
        start_ids = self._input_start_ids(class_labels, len(masks), num_samples)
        tokens = self._sample_images(start_ids, known, class_labels=class_labels, **sampling)
        return self._output(tokens, processor, sampling)

    def _token_mask(self, pixel_mask: torch.BoolTensor) -> torch.BoolTensor:
        """`(B, S, S)` pixel mask -> `(B, N)` token mask (every sub-pixel token of a masked pixel)."""
        return pixel_mask.flatten(1).repeat_interleave(self.config.tokens_per_pixel, dim=1)

    @torch.no_grad()
    def vary_images(self, images, strength: float = 0.5, num_variations: int = 1, class_labels=None,
                    image_processor=None, **sampling):
        """Variations: keep a random `1 - strength` share of each image's pixels and redraw the rest with an
        inpainting model. `strength` 0 returns the image itself, 1 draws a new image; the kept pixels hold the
        coarse structure. A fresh set of pixels is redrawn for each of the `num_variations`. Sampling arguments as
        in `generate_images` (the `generator` also picks the redrawn pixels)."""
        self._require_task("vary_images", "inpaint")
        processor = self._resolve_image_processor(image_processor)
        if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}.")
        self._check_count("num_variations", num_variations)
        known = self._encode(images, processor, num_variations)  # (B, N)
        size = self.config.image_size
        draws = torch.rand(len(known), size * size, generator=sampling.get("generator"))
        redraw = draws.argsort(dim=1).argsort(dim=1) < round(strength * size * size)  # exactly that many pixels
        known = known.masked_fill(self._token_mask(redraw.view(-1, size, size)), -1)
        start_ids = self._input_start_ids(class_labels, len(known) // num_variations, num_variations)
        tokens = self._sample_images(start_ids, known, class_labels=class_labels, **sampling)
        return self._output(tokens, processor, sampling)

    @torch.no_grad()
    def outpaint_images(self, images, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
                        class_labels=None, image_processor=None, **sampling):
        """Extend each image beyond its borders by the given numbers of pixels (on the model's grid), with an
        inpainting model.

        The canvas may be larger than the training resolution: it is filled by `image_size`-square windows that
        step outwards from the image by half a window, each redrawing its empty pixels from everything already
        there. Every pass thus stays inside the grid the model was trained on (2-D rotary positions would accept a
        larger grid, but offsets beyond `image_size` were never trained); the price is that a window sees only the
        last `image_size` pixels, not the whole canvas. Returns PIL images of size
        `(image_size + left + right) x (image_size + top + bottom)`. Sampling arguments as in `generate_images`;
        `batch_size` applies per window.
        """
        self._require_task("outpaint_images", "inpaint")
        processor = self._resolve_image_processor(image_processor)
        size, t = self.config.image_size, self.config.tokens_per_pixel
        for name, value in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4 * size:
                raise ValueError(f"`{name}` must be an int in [0, {4 * size}] (pixels to add), got {value!r}.")
        tokens = self._encode(images, processor)  # (B, N)
        batch, height, width = len(tokens), size + top + bottom, size + left + right
        canvas = torch.full((batch, height, width, t), -1, dtype=torch.long)
        canvas[:, top : top + size, left : left + size] = tokens.view(batch, size, size, t)
        start_ids = self._input_start_ids(class_labels, batch, 1)
        generator = sampling.pop("generator", None)
        output_type = sampling.get("output_type", "pil")

        def steps(origin, low_end):  # window corners from the image outwards, half a window at a time
            corners = {origin}
            for direction, stop in ((-1, 0), (1, low_end)):
                corner = origin
                while corner != stop:
                    corner = max(0, corner - size // 2) if direction < 0 else min(stop, corner + size // 2)
                    corners.add(corner)
            return corners

        windows = sorted(((y, x) for y in steps(top, height - size) for x in steps(left, width - size)),
                         key=lambda yx: (abs(yx[0] - top) + abs(yx[1] - left), yx))
        for y, x in windows:
            window = canvas[:, y : y + size, x : x + size]  # (B, S, S, t) view
            if (window >= 0).all():
                continue
            filled = self._sample_images(start_ids, window.reshape(batch, -1), class_labels=class_labels,
                                  generator=generator, **dict(sampling, output_type="tokens"))
            window.copy_(filled[:, 1:].view(batch, size, size, t))
        if output_type == "tokens":
            return canvas.flatten(1)
        pixels = processor.dequantize(canvas.flatten(1).numpy(), height=height, width=width)
        return processor.to_pil(pixels)

    @torch.no_grad()
    def translate_images(self, images, num_samples: int = 1, image_processor=None, **sampling):
        """Draw target images from condition images, `num_samples` per input, with a conditional model: a paired
        translation model (`--task translate`: source -> target), a colorization model (grayscale in) or an
        upscaling model (low resolution in). `images` are encoded by the processor's condition settings. Sampling
        arguments as in `generate_images`."""
        return self._conditional("translate_images", ("translate", "colorize", "upscale"), images, num_samples,
                                 image_processor, sampling)

    @torch.no_grad()
    def colorize_images(self, images, num_samples: int = 1, keep_luminance: bool = True, image_processor=None,
                        **sampling):
        """Colour versions of (grayscale) images, `num_samples` per input, from a model trained with
        `--task colorize`: colour images are read as grayscale first, so any image works as input.

        `keep_luminance=True` keeps the input's own gray values as the luminance (Y of YCbCr) and takes only the
        colour (Cb, Cr) from the model, so no detail of the input is lost to the model's colour quantization (as
        colorization methods that predict chroma only; where a colour at that luminance is outside the RGB gamut,
        it is clipped). Sampling arguments as in `generate_images`."""
        colour = self._conditional("colorize_images", ("colorize",), images, num_samples, image_processor, sampling)
        if not keep_luminance or sampling.get("output_type", "pil") != "pil":
            return colour
        processor = self._resolve_image_processor(image_processor)
        gray = type(processor)(quantization="gray8", image_size=self.config.image_size,
                               resize_mode=processor.resize_mode, resample=processor.resample,
                               background=processor.background).to_array(images)[..., 0]  # (B, S, S)
        out = []
        for i, image in enumerate(colour):
            _, cb, cr = image.convert("YCbCr").split()
            out.append(Image.merge("YCbCr", (Image.fromarray(gray[i // num_samples]), cb, cr)).convert("RGB"))
        return out

    @torch.no_grad()
    def upscale_images(self, images, num_samples: int = 1, image_processor=None, **sampling):
        """Super-resolution: `image_size`-square images from low-resolution inputs (resized to the model's
        `condition_size` first), `num_samples` per input, with a model trained with `--task upscale`."""
        return self._conditional("upscale_images", ("upscale",), images, num_samples, image_processor, sampling)

    def _conditional(self, method, tasks, images, num_samples, image_processor, sampling):
        self._require_task(method, *tasks)
        processor = self._resolve_image_processor(image_processor)
        self._check_count("num_samples", num_samples)
        condition = processor.encode_condition(images, return_tensors="pt").condition_ids
        condition = condition.repeat_interleave(num_samples, dim=0)  # (B, C)
        tokens = self._sample_images([self.config.start_token_id] * len(condition), None, condition, **sampling)
        return self._output(tokens, processor, sampling)

    @staticmethod
    def _output(tokens, processor, sampling):
        return tokens if sampling.get("output_type", "pil") == "tokens" else processor.decode(tokens)

    def _generate_reference(self, start, prefix, temperature, top_k, top_p, guidance_scale, bar, **generate_kwargs):
        input_ids = start.unsqueeze(1) if prefix is None else torch.cat([start.unsqueeze(1), prefix], 1)  # (b, 1 + P)
        if input_ids.shape[1] == 1 + self.config.num_image_tokens:
            return input_ids  # every token is given: nothing to sample
        sampling = dict(do_sample=temperature > 0)
        if temperature > 0:
            sampling.update(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
        if guidance_scale != 1.0:
            unconditional = input_ids.clone()
            unconditional[:, 0] = self.config.start_token_id
            sampling.update(guidance_scale=guidance_scale, negative_prompt_ids=unconditional)

        class _Tick(LogitsProcessor):  # advances the progress bar once per generated position
            def __call__(self, ids, scores):
                bar.update(ids.shape[0])
                return scores

        return self.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=self.config.num_image_tokens - input_ids.shape[1] + 1,
            logits_processor=LogitsProcessorList([_Tick()]),
            pad_token_id=None,
            eos_token_id=None,
            **sampling,
            **generate_kwargs,
        )


class PixelGPTForImageClassification(PixelGPTPreTrainedModel):
    """PixelGPT features averaged over image positions, then a linear classifier (e.g. for linear probes)."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = PixelGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, 1 + num_image_tokens)`):
            A start token followed by image tokens, as the image processor returns them.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, `loss` is the cross-entropy.
        """
        outputs = self.model(input_ids=input_ids, use_cache=False, output_hidden_states=output_hidden_states, **kwargs)
        pooled = outputs.last_hidden_state[:, 1:].mean(dim=1)  # (B, D): mean over image-token positions
        logits = self.score(pooled)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


PixelGPTForImageGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "PixelGPTLinear",
    "PixelGPTStaticCache",
    "PixelGPTPreTrainedModel",
    "PixelGPTModel",
    "PixelGPTForImageGeneration",
    "PixelGPTForImageClassification",
]
