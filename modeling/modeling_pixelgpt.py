"""PixelGPT: a decoder-only transformer that models an image as a sequence of tokens, in raster order or (inpainting
models) in any order.

Sequence layout: `[start, x_0, x_1, ..., x_{N-1}]`, where the start token is the unconditional `start_token_id` or
a class token, and `x_i` are image tokens from the image processor. Logits at sequence index t predict `x_t`.
Class-conditional models may also add a class embedding to every row (`class_embedding`); conditional tasks put a
condition image's tokens before the start token (`condition_prefix`) and/or add to each row the condition under the
pixel it predicts (`aligned_condition`). Text models put the prompt's tokens first of all and add its mean word
embedding to every row.

Positions are 2-D rotary embeddings of (row, column) (`rotary_pixelgpt.py`): a query is rotated by the position of
the token it predicts and a key by the position of the token it holds. Tokens of the same pixel (per-sub-pixel
`rgb8`) share the position and are told apart by a learned channel embedding.

This file is the network and its loss. Its projections are `PixelGPTLinear` (`linear_pixelgpt.py`), the rows it
reads for each task are built in `layouts_pixelgpt.py`, the sampling loops are `sampling_pixelgpt.py` with their
caches in `cache_pixelgpt.py`, and the image methods (`generate_images`, `inpaint_images`, ...) come from
`PixelGPTImageTasksMixin` in `tasks_pixelgpt.py`.
"""

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .cache_pixelgpt import PixelGPTStaticCache
from .configuration_pixelgpt import PixelGPTConfig
from .layouts_pixelgpt import aligned_condition_weights
from .linear_pixelgpt import PixelGPTLinear
from .modeling_pixelgpt_vqvae import PixelGPTVQVAE
from .pipeline_pixelgpt import PixelGPTPipeline  # imported so that remote code fetches the file, saved beside models
from .rotary_pixelgpt import PixelGPTRotaryEmbedding, apply_rotary
from .tasks_pixelgpt import PixelGPTImageTasksMixin

# The `pipeline()` tasks every saved model answers to (see pipeline_pixelgpt.py); text models also "text-to-image".
PIPELINE_TASKS = ("unconditional-image-generation", "image-to-image")

# transformers 5.24 renamed `past_key_values` to `cache` in model inputs, outputs and generate(); the forwards
# below take either name and return the cache under the installed version's name.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

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
        tasks = PIPELINE_TASKS + (("text-to-image",) if self.config.is_text_conditional else ())
        self.config.custom_pipelines = {task: dict(entry) for task in tasks}
        # The pipeline file is saved beside the weights with the other code: this file imports it (relatively).
        return super().save_pretrained(save_directory, *args, **kwargs)


class PixelGPTModel(PixelGPTPreTrainedModel):
    """The bare transformer: token ids in, final (normalised) hidden states out."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # Start tokens (unconditional + one per class) have their own table so that the image-token table keeps
        # exactly the output head's shape and can be tied to it.
        self.embed_start = nn.Embedding(config.num_start_tokens, config.hidden_size)
        # Which sub-pixel (R, G or B) the next token is; only needed when a pixel takes several tokens.
        self.channel_embed = (nn.Embedding(config.tokens_per_pixel, config.hidden_size)
                              if config.tokens_per_pixel > 1 else None)
        # Conditional tasks read a condition image first, with its own token table ...
        self.embed_condition = (nn.Embedding(config.condition_vocab_size, config.hidden_size)
                                if config.is_conditional and config.condition_prefix else None)
        # ... and/or add the condition under each row's target pixel (bilinearly read) to that row: attention then
        # never has to find it (a separate table: "the pixel I draw lies over this" is not "a pixel I can look at").
        self.embed_aligned = (nn.Embedding(config.condition_vocab_size, config.hidden_size)
                              if config.is_conditional and config.aligned_condition else None)
        # With patches (`condition_patch_size` p > 1) a condition row sums its p*p pixels' embeddings, each gated per
        # feature by its place in the patch (a depthwise layer: edges and gradients inside a cell stay readable).
        # It starts as the patch's mean embedding.
        patch = config.condition_patch_size**2
        gate = (lambda: nn.Parameter(torch.full((patch, config.hidden_size), 1.0 / patch))) if patch > 1 else None
        self.condition_patch_gate = gate() if gate and config.condition_prefix else None
        self.aligned_patch_gate = gate() if gate and config.aligned_condition else None
        # The class (or the unconditional start, for guidance) added to every row, not only read once at the start.
        self.embed_class = nn.Embedding(config.num_start_tokens, config.hidden_size) if config.class_embedding else None
        # A text model reads its prompt first, as DALL-E and LlamaGen do (word order and detail, through attention),
        # with a learned embedding per prompt slot; and, as class models add the class, every row adds the mean of
        # the prompt's words from a second table: "purple" then steers every pixel directly, and a colour word
        # learned on hearts and circles also applies to squares (a sum composes).
        text = config.is_text_conditional
        self.embed_text = nn.Embedding(config.text_vocab_size, config.hidden_size) if text else None
        self.embed_text_position = nn.Embedding(config.max_text_length, config.hidden_size) if text else None
        self.embed_prompt = nn.Embedding(config.text_vocab_size, config.hidden_size) if text else None
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

    def condition_cells(self, table: nn.Embedding, gate: nn.Parameter | None, condition_ids, index=None):
        """The embedding of each condition row on the `condition_grid_size` grid, `(B, G*G, D)`: a pixel's (no
        patches) or its patch's gated sum; with `index` `(B, K)` those cells only, `(B, K, D)`. A call for a few
        rows (a sampling step) embeds only the cells it reads, a full sequence every cell once."""
        batch, p, grid = condition_ids.shape[0], self.config.condition_patch_size, self.config.condition_grid_size
        cells = condition_ids.view(batch, grid, p, grid, p).transpose(2, 3).reshape(batch, grid * grid, p * p)
        few = index is not None and index.shape[1] < cells.shape[1]
        if few:
            cells = cells.gather(1, index[..., None].expand(-1, -1, p * p))  # (B, K, p*p)
        embedded = table(cells)  # (B, cells, p*p, D)
        embedded = embedded[:, :, 0] if gate is None else (embedded * gate).sum(2)  # (B, cells, D)
        if index is None or few:
            return embedded
        return embedded.gather(1, index[..., None].expand(-1, -1, embedded.shape[-1]))  # (B, K, D)

    def check_condition(self, condition_ids: torch.LongTensor | None) -> None:
        if condition_ids is None:
            return
        if not self.config.is_conditional:
            raise ValueError(f"`condition_ids` were given, but this model (task {self.config.task!r}) was not "
                             "trained with a condition image.")
        if condition_ids.shape[1] != self.config.num_condition_tokens:
            raise ValueError(f"`condition_ids` must have {self.config.num_condition_tokens} tokens per image "
                             f"({self.config.condition_size}^2), got shape {tuple(condition_ids.shape)}.")

    def check_text(self, text_ids: torch.LongTensor | None, batch: int) -> torch.LongTensor | None:
        """The prompt tokens of each sequence, `(B, max_text_length)`: those given, or the empty prompt (all
        padding: unconditional) for a text model called without them; None for a model without prompts."""
        config = self.config
        if not config.is_text_conditional:
            if text_ids is not None:
                raise ValueError("`text_ids` (a prompt) were given, but this model was trained without text prompts "
                                 "(train one with --text_conditional).")
            return None
        if text_ids is None:
            return torch.full((batch, config.max_text_length), config.text_pad_token_id, dtype=torch.long,
                              device=self.embed_text.weight.device)
        if text_ids.dim() != 2 or text_ids.shape[1] != config.max_text_length:
            raise ValueError(f"`text_ids` must have shape (batch, {config.max_text_length}) (max_text_length), got "
                             f"{tuple(text_ids.shape)}.")
        if bool(((text_ids < 0) | (text_ids >= config.text_vocab_size)).any()):
            raise ValueError(f"`text_ids` must be prompt token ids in [0, {config.text_vocab_size}).")
        return text_ids.to(self.embed_text.weight.device)

    def prompt_embedding(self, text_ids: torch.LongTensor) -> torch.Tensor:
        """The mean embedding of each prompt's words (padding left out; the empty prompt: its padding's), `(B, D)`."""
        words = text_ids != self.config.text_pad_token_id  # (B, L)
        words[:, 0] |= ~words.any(1)  # the empty prompt is read as its first padding token
        weights = words.to(self.embed_prompt.weight.dtype) / words.sum(1, keepdim=True)  # (B, L)
        return (weights[..., None] * self.embed_prompt(text_ids)).sum(1)  # (B, D)

    def add_row_context(self, inputs_embeds, input_ids, target_positions, start_ids, condition_ids,
                        text_ids=None) -> torch.Tensor:
        """Add to each row what it is told besides its token: the sub-pixel it predicts (`tokens_per_pixel` > 1),
        its sequence's class (`class_embedding`) or prompt (text models), and the condition under the pixel it
        predicts (`aligned_condition`). Returns `(B, T, D)`."""
        if self.channel_embed is not None:
            # Tell each row which sub-pixel (R, G or B) it predicts.
            inputs_embeds = inputs_embeds + self.channel_embed(target_positions % self.config.tokens_per_pixel)
        if self.embed_class is not None:
            if start_ids is None:
                if input_ids is None or bool((input_ids[:, 0] < self.config.vocab_size).any()):
                    raise ValueError("This model adds a class embedding to every row: pass `start_ids` (the start "
                                     "or class token of each sequence) with every call whose first row is not one.")
                start_ids = input_ids[:, 0]
            classes = self.embed_class(start_ids.to(inputs_embeds.device) - self.config.vocab_size)  # (B, D)
            inputs_embeds = inputs_embeds + classes[:, None]
        if text_ids is not None:
            inputs_embeds = inputs_embeds + self.prompt_embedding(text_ids)[:, None]  # (B, T, D)
        if self.embed_aligned is not None:
            if condition_ids is None:
                raise ValueError(f"This model (task {self.config.task!r}) reads a condition image at every row: "
                                 "pass `condition_ids` with every call.")
            batch, rows = inputs_embeds.shape[:2]
            index, weight = aligned_condition_weights(self.config, target_positions.expand(batch, rows))  # (B,T,4)
            values = self.condition_cells(self.embed_aligned, self.aligned_patch_gate, condition_ids,
                                          index.flatten(1))  # (B, T*4, D)
            aligned = (weight.to(inputs_embeds.dtype)[..., None] * values.view(batch, rows, 4, -1)).sum(2)  # (B,T,D)
            inputs_embeds = inputs_embeds + aligned
        return inputs_embeds

    def prepend(self, inputs_embeds, position_embeddings, rows, rotation):
        """Put `rows` `(B, P, D)` before the image rows, with their `rotation` (`(cos, sin)`, each `(1, 1, P, hd)`)."""
        batch = inputs_embeds.shape[0]
        inputs_embeds = torch.cat([rows, inputs_embeds], dim=1)  # (B, P + T, D)
        position_embeddings = tuple(
            torch.cat([c.expand(2, batch, -1, -1), x.expand(2, batch, -1, -1)], dim=2)
            for c, x in zip(rotation, position_embeddings)
        )  # each (2, B, P + T, hd)
        return inputs_embeds, position_embeddings

    def prepend_context(self, inputs_embeds, position_embeddings, condition_ids, text_ids):
        """Put the condition image's rows (`condition_prefix`) before the image rows, and the prompt's rows (text
        models) before all: each with its rotation, the prompt's all at the start token's (pixel -1), its order
        told by the slot embeddings. Without either, the rows are returned as they are."""
        device, dtype = inputs_embeds.device, inputs_embeds.dtype
        if condition_ids is not None and self.embed_condition is not None:
            rotation = self.rotary_emb.condition(self.config.condition_grid_size, device, dtype)
            rows = self.condition_cells(self.embed_condition, self.condition_patch_gate, condition_ids)  # (B,G*G,D)
            inputs_embeds, position_embeddings = self.prepend(inputs_embeds, position_embeddings, rows, rotation)
        if text_ids is not None:
            rows = self.embed_text(text_ids) + self.embed_text_position.weight  # (B, L, D)
            before = torch.full((1, 1, text_ids.shape[1]), -1, device=device)
            rotation = self.rotary_emb._compute_cos_sin(before, dtype)  # each (1, 1, L, hd)
            inputs_embeds, position_embeddings = self.prepend(inputs_embeds, position_embeddings, rows, rotation)
        return inputs_embeds, position_embeddings

    def sequence_positions(self, past_seen: int, inputs_embeds, condition_ids) -> torch.LongTensor:
        """The sequence indices of the new rows, counted from the start token's (0): a cache also holds the prompt
        and condition rows placed before it. Returns `(1, T)`."""
        first = past_seen - self.config.num_text_tokens if past_seen else 0
        if past_seen and condition_ids is not None and self.embed_condition is not None:
            first -= self.config.num_condition_rows
        return torch.arange(first, first + inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)

    def causal_mask(self, inputs_embeds, attention_mask, past_key_values, position_ids):
        if isinstance(past_key_values, PixelGPTStaticCache):  # PixelGPT's own caches make their own masks
            return past_key_values.causal_mask(inputs_embeds.shape[1], self.config._attn_implementation)
        # The cache goes fourth, by position: its keyword is `past_key_values` before transformers 5.24, then `cache`.
        return create_causal_mask(self.config, inputs_embeds, attention_mask, past_key_values,
                                  position_ids=position_ids)

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
        start_ids: torch.LongTensor | None = None,
        text_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        input_positions / target_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Image-token index held by each row (start rows: negative) and index of the token each row predicts.
            Default: raster order, `position_ids - 1` and `position_ids`. Other values give k-ahead prediction
            (row holds token j - k, predicts token j) for parallel decoding, or any generation order (row holds
            token `order[t - 1]`, predicts `order[t]`) for any-order models.
        condition_ids (`torch.LongTensor` of shape `(batch_size, condition_size**2)`, *optional*):
            Condition-image tokens (conditional tasks), given with every call of a sequence. With
            `condition_prefix` they are placed before the rows of `input_ids` when the sequence begins (no cache or
            an empty one), and the returned hidden states then start with their rows; with `aligned_condition`
            each row also adds the one under the pixel it predicts.
        start_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            For `class_embedding` models, each sequence's start or class token: needed with every call whose first
            row is not a start token (a cached continuation). Default: the first row's token.
        text_ids (`torch.LongTensor` of shape `(batch_size, max_text_length)`, *optional*):
            Text models: the prompts (the processor's `text_ids`), given with every call; default the empty prompt.
        cache (`Cache`, *optional*):
            The name transformers >= 5.24 gives `past_key_values`; either may be passed.
        """
        past_key_values = past_key_values if past_key_values is not None else cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        # A cache is useless in training and conflicts with recomputation.
        use_cache = (self.config.use_cache if use_cache is None else use_cache) and not (
            self.gradient_checkpointing and self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)  # (B, T, D)
        past_key_values = DynamicCache(config=self.config) if use_cache and past_key_values is None else past_key_values
        past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = self.sequence_positions(past_seen, inputs_embeds, condition_ids)  # (1, T)
        if target_positions is None:  # raster order: sequence index t holds x_{t-1} (start: -1) and predicts x_t
            input_positions, target_positions = position_ids - 1, position_ids
        self.check_condition(condition_ids)
        text_ids = self.check_text(text_ids, inputs_embeds.shape[0])
        inputs_embeds = self.add_row_context(inputs_embeds, input_ids, target_positions, start_ids, condition_ids,
                                             text_ids)
        position_embeddings = self.rotary_emb(inputs_embeds, input_positions, target_positions)
        if past_seen == 0:  # the call that begins a sequence puts the prompt and condition rows first
            inputs_embeds, position_embeddings = self.prepend_context(inputs_embeds, position_embeddings,
                                                                      condition_ids, text_ids)  # (B, P + T, D)
            position_ids = None  # positions of the image rows only; the mask needs no packing hints

        causal_mask = self.causal_mask(inputs_embeds, attention_mask, past_key_values, position_ids)
        hidden_states, all_hidden_states = inputs_embeds, (() if output_hidden_states else None)
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


class PixelGPTForImageGeneration(PixelGPTPreTrainedModel, PixelGPTImageTasksMixin, GenerationMixin):
    """PixelGPT with a next-token head over image tokens: the training loss, transformers' `generate()`, and the
    image methods of `PixelGPTImageTasksMixin` (`generate_images`, `inpaint_images`, ...; tasks_pixelgpt.py)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PixelGPTConfig):
        super().__init__(config)
        self.model = PixelGPTModel(config)
        self.lm_head = PixelGPTLinear(config.hidden_size, config.vocab_size)
        # A model on a tokenizer's grid carries the tokenizer (frozen, trained first), as Janus carries its VQ
        # model: one from_pretrained loads both, one safetensors file holds both.
        self.image_tokenizer = None
        if config.tokenizer_config is not None:
            self.image_tokenizer = PixelGPTVQVAE._from_config(config.tokenizer_config)
            self.image_tokenizer.requires_grad_(False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading materializes fresh parameters (trainable by default): keep a carried tokenizer frozen, so that
        # fine-tuning a loaded model never changes the codes its data was encoded with.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.image_tokenizer is not None:
            model.image_tokenizer.requires_grad_(False)
        return loaded

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args, **kwargs):
        # Once a cache holds the first rows, generate() feeds only the new ones: give every call the start tokens
        # (column 0 of the whole sequence), which class-embedding models add to every row.
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        if self.model.embed_class is not None:
            inputs.setdefault("start_ids", input_ids[:, 0])
        return inputs

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
        start_ids: torch.LongTensor | None = None,
        text_ids: torch.LongTensor | None = None,
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
        start_ids: each sequence's start or class token, for `class_embedding` models (see `PixelGPTModel.forward`).
        text_ids: the prompt tokens of text models (see `PixelGPTModel.forward`); their rows predict nothing either.
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
            start_ids=start_ids,
            text_ids=text_ids,
            **kwargs,
        )
        rows = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        hidden_states = outputs.last_hidden_state[:, -rows:]  # (B, T, D): without the prompt and condition rows
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
        pooled = outputs.last_hidden_state[:, -self.config.num_image_tokens :].mean(dim=1)  # (B, D): image rows
        logits = self.score(pooled)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


PixelGPTForImageGeneration.register_for_auto_class("AutoModel")
# A saved classifier carries the code too, so it loads through remote code as well.
PixelGPTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["PixelGPTForImageClassification", "PixelGPTForImageGeneration", "PixelGPTModel", "PixelGPTPreTrainedModel"]
