"""PixelGPT: a decoder-only transformer that models an image as a raster-order sequence of tokens.

Sequence layout: `[start, x_0, x_1, ..., x_{N-1}]`, where the start token is the unconditional `start_token_id` or
a class token, and `x_i` are image tokens from the image processor. Logits at sequence index t predict `x_t`.

Positions are 2-D rotary embeddings of (row, column). A query is rotated by the position of the token it predicts
and a key by the position of the token it holds, so every attention score sees the offset between "the pixel being
drawn" and "a pixel already drawn" (the start token sits at pixel -1, just before the first one). Tokens of the
same pixel (per-sub-pixel `rgb8`) share the position and are told apart by a learned channel embedding.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_pixelgpt import PixelGPTConfig


class PixelGPTRotaryEmbedding(nn.Module):
    """2-D rotary embedding: half of each head's rotation pairs turn with the row, the other half with the column."""

    def __init__(self, config: PixelGPTConfig):
        super().__init__()
        self.quarter = config.head_dim // 4
        self.theta = config.rope_theta
        self.image_size = config.image_size
        self.tokens_per_pixel = config.tokens_per_pixel

    def _cos_sin(self, pixel: torch.Tensor, width: int, dtype: torch.dtype):
        # Frequencies are recomputed each call (a handful of numbers) rather than kept in a non-persistent buffer,
        # which `from_pretrained` would leave uninitialised.
        inv_freq = self.theta ** (-torch.arange(self.quarter, device=pixel.device, dtype=torch.float32) / self.quarter)
        row = torch.div(pixel, width, rounding_mode="floor")
        col = pixel - row * width
        freqs = torch.cat([row[..., None] * inv_freq, col[..., None] * inv_freq], dim=-1)  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, input_positions: torch.LongTensor, target_positions: torch.LongTensor,
                image_width: int | None = None):
        """Positions are image-token indices (negative for start tokens): a key is rotated by the pixel of the token
        it holds, a query by the pixel of the token it predicts."""
        width = image_width or self.image_size
        key_pixel = torch.div(input_positions, self.tokens_per_pixel, rounding_mode="floor")
        query_pixel = torch.div(target_positions, self.tokens_per_pixel, rounding_mode="floor")
        return self._cos_sin(query_pixel, width, x.dtype), self._cos_sin(key_pixel, width, x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): broadcast over heads
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
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

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
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, hd)
        (cos_q, sin_q), (cos_k, sin_k) = position_embeddings
        query = apply_rotary(query, cos_q, sin_q)
        key = apply_rotary(key, cos_k, sin_k)
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
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

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
    _skip_keys_device_placement = ["past_key_values"]
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
        self.channel_embed = nn.Embedding(config.tokens_per_pixel, config.hidden_size) if config.tokens_per_pixel > 1 else None
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
        input_positions: torch.LongTensor | None = None,
        target_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        input_positions / target_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Image-token index held by each row (start rows: negative) and index of the token each row predicts.
            Default: raster order, `position_ids - 1` and `position_ids`. Other values give k-ahead prediction
            (row holds token j - k, predicts token j) for parallel decoding.
        """
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

        if isinstance(past_key_values, PixelGPTStaticCache):
            causal_mask = past_key_values.causal_mask(inputs_embeds.shape[1], self.config._attn_implementation)
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                position_ids=position_ids,
            )
        position_embeddings = self.rotary_emb(inputs_embeds, input_positions, target_positions)
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
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states,
        )


class PixelGPTForImageGeneration(PixelGPTPreTrainedModel, GenerationMixin):
    """PixelGPT with a next-token head over image tokens: training loss, `generate()` and `generate_images()`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PixelGPTConfig):
        super().__init__(config)
        self.model = PixelGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
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
        input_positions: torch.LongTensor | None = None,
        target_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Usually the `input_ids` themselves. The shift happens here: logits at index t are scored against
            `labels[:, t + 1]`, so `labels[:, 0]` (the start token) is never a target. Use -100 to ignore a position.
            `loss` is the mean cross-entropy in nats per scored token.
        input_positions / target_positions: see `PixelGPTModel.forward` (k-ahead prediction for parallel decoding).
            With explicit `target_positions` there is no shift: `labels[:, t]` is the token row t predicts.
        """
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
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
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
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
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
        expected = (self.config.vocab_size, self.config.tokens_per_pixel, self.config.image_size)
        found = (processor.vocab_size, processor.tokens_per_pixel, processor.image_size)
        if found != expected:
            raise ValueError(
                f"Image processor does not match the model: (vocab_size, tokens_per_pixel, image_size) is {found} "
                f"for the processor and {expected} for the model."
            )
        return processor

    def k_ahead_inputs(self, input_ids: torch.LongTensor, k: int) -> dict:
        """Inputs for k-ahead training or scoring from `(B, 1 + N)` processor ids: row t holds token t - k (the first
        k rows are start tokens at positions -k..-1) and predicts token t. k = 1 is the usual raster model."""
        batch, n = input_ids.shape[0], input_ids.shape[1] - 1
        rows = torch.cat([input_ids[:, :1].expand(batch, k), input_ids[:, 1 : 1 + n - k]], dim=1)  # (B, N)
        targets = torch.arange(n, device=input_ids.device).expand(batch, n)
        return dict(input_ids=rows, input_positions=targets - k, target_positions=targets, labels=input_ids[:, 1:])

    @staticmethod
    def _draw(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.LongTensor:
        """Sample one token per row of `(B, m, V)` logits. Mirrors generate()'s temperature -> top-k -> top-p
        warpers and its `torch.multinomial` draw, so both paths give the same tokens under the same seed."""
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
        return torch.multinomial(probs.flatten(0, -2), 1).view(probs.shape[:-1])

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
    ) -> torch.LongTensor:
        """PixelGPT's own sampling loop: static KV cache, one forward pass per `tokens_per_step` tokens.

        Args:
            start_ids: `(B,)` start or class tokens.
            tokens_per_step: k tokens per pass; k > 1 feeds the k tokens drawn last and predicts the next k
                (k-ahead, for models trained with `parallel_tokens=k`).
            prefix: `(B, P)` known first image tokens (raster order) to continue from; they are kept as given.
            guidance_scale: classifier-free guidance for class tokens: the unconditional branch (start token
                `start_token_id`) runs in the same batch and the next-token log-probabilities become
                `u + s * (c - u)`, as transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor` does.
        Draws from torch's global generator, like `generate()`. Returns `(B, 1 + N)` ids in raster order.
        """
        k, n = tokens_per_step, self.config.num_image_tokens
        batch, device = start_ids.shape[0], start_ids.device
        tokens = torch.empty(batch, n, dtype=torch.long, device=device)
        done = 0 if prefix is None else prefix.shape[1]
        if done:
            tokens[:, :done] = prefix
        guided = guidance_scale != 1.0
        starts = start_ids
        if guided:  # conditional rows first, then the same rows with the unconditional start token
            starts = torch.cat([start_ids, torch.full_like(start_ids, self.config.start_token_id)])
        cache = PixelGPTStaticCache(self.config, starts.shape[0], k + n, device, self.dtype)
        cached = -k  # the cache holds the rows of token indices [-k, cached); negative indices are start rows
        while done < n:
            m = min(k, n - done)
            index = torch.arange(cached, done + m - k, device=device)  # rows still missing: token indices held
            ids = tokens[:, index.clamp(min=0)]
            ids = torch.where(index < 0, start_ids[:, None], ids)  # (B, rows)
            if guided:
                ids = torch.cat([ids, torch.where(index < 0, starts[batch:, None], ids)])
            rows = ids.shape[1]
            logits = self(input_ids=ids, past_key_values=cache, use_cache=True,
                          input_positions=index.expand(ids.shape[0], rows),
                          target_positions=(index + k).expand(ids.shape[0], rows)).logits[:, -m:]  # (B', m, V)
            if guided:
                cond, uncond = logits[:batch].float().log_softmax(-1), logits[batch:].float().log_softmax(-1)
                logits = uncond + guidance_scale * (cond - uncond)
            tokens[:, done : done + m] = self._draw(logits, temperature, top_k, top_p)
            cached, done = done + m - k, done + m
            if progress is not None:
                progress.update(m * batch)  # the bar counts image tokens
        return torch.cat([start_ids[:, None], tokens], dim=1)

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
        if generate_kwargs and not use_generate:
            raise ValueError(f"{sorted(generate_kwargs)} are generate() arguments; pass use_generate=True.")

    def _start_ids(self, class_labels, repeats: int) -> list[int]:
        """One start token per output image: unconditional, or each class label `repeats` times."""
        if class_labels is None:
            return [self.config.start_token_id] * repeats
        labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
        return [self.config.class_token_id(int(c)) for c in labels for _ in range(repeats)]

    def _run_batches(self, start_ids, prefixes, generator, batch_size, show_progress, use_generate, tokens_per_step,
                     temperature, top_k, top_p, guidance_scale, generate_kwargs) -> torch.LongTensor:
        device = self.device
        seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        start_ids = torch.tensor(start_ids, device=device)
        known = 0 if prefixes is None else prefixes.shape[1]
        bar = tqdm(total=len(start_ids) * (self.config.num_image_tokens - known), desc="Sampling", unit="tok",
                   disable=not show_progress)
        outputs = []
        # Both paths draw from torch's global generator: fork it so that a `generator` gives reproducible images
        # without disturbing the caller's global random state.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(0, len(start_ids), batch_size):
                start = start_ids[i : i + batch_size]
                prefix = None if prefixes is None else prefixes[i : i + batch_size].to(device)
                if use_generate:
                    out = self._generate_reference(start, prefix, temperature, top_k, top_p, guidance_scale, bar,
                                                   **generate_kwargs)
                else:
                    out = self.sample_tokens(start, tokens_per_step, temperature, top_k, top_p, progress=bar,
                                             prefix=prefix, guidance_scale=guidance_scale)
                outputs.append(out.cpu())  # (b, 1 + N)
        bar.close()
        return torch.cat(outputs)

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
        """
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"`num_images` must be a positive int, got {num_images!r}.")
        self._check_sampling(batch_size, temperature, top_k, top_p, tokens_per_step, guidance_scale, class_labels,
                             output_type, use_generate, generate_kwargs)
        processor = self._resolve_image_processor(image_processor) if output_type == "pil" else None
        tokens = self._run_batches(self._start_ids(class_labels, num_images), None, generator, batch_size,
                                   show_progress, use_generate, tokens_per_step, temperature, top_k, top_p,
                                   guidance_scale, generate_kwargs)
        return tokens if output_type == "tokens" else processor.decode(tokens)

    @torch.no_grad()
    def complete_images(
        self,
        images,
        keep_rows: int,
        num_completions: int = 1,
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
        """Keep the top `keep_rows` pixel rows of each image and sample the rest, `num_completions` times each.

        `images` are anything the image processor takes (one image or a batch); the output holds
        `len(images) * num_completions` images, the completions of the first input first. The kept rows come back
        exactly as the processor quantized them (pixel for pixel the input in lossless modes). `class_labels` (one
        per input, for class-conditional models) and the sampling arguments are as in `generate_images`.
        """
        processor = self._resolve_image_processor(image_processor)
        if not isinstance(keep_rows, int) or not 0 <= keep_rows <= self.config.image_size:
            raise ValueError(f"`keep_rows` must be an int in [0, {self.config.image_size}] (the image height), "
                             f"got {keep_rows!r}.")
        if not isinstance(num_completions, int) or num_completions < 1:
            raise ValueError(f"`num_completions` must be a positive int, got {num_completions!r}.")
        self._check_sampling(batch_size, temperature, top_k, top_p, tokens_per_step, guidance_scale, class_labels,
                             output_type, use_generate, generate_kwargs)
        ids = processor(images, return_tensors="pt").input_ids  # (n_inputs, 1 + N)
        known = keep_rows * self.config.image_size * self.config.tokens_per_pixel
        prefixes = ids[:, 1 : 1 + known].repeat_interleave(num_completions, dim=0)
        if class_labels is None:
            start_ids = [self.config.start_token_id] * len(prefixes)
        else:
            labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
            if len(labels) != len(ids):
                raise ValueError(f"Give one class label per input image: {len(ids)} images, {len(labels)} labels.")
            start_ids = self._start_ids(labels, num_completions)
        tokens = self._run_batches(start_ids, prefixes, generator, batch_size, show_progress, use_generate,
                                   tokens_per_step, temperature, top_k, top_p, guidance_scale, generate_kwargs)
        return tokens if output_type == "tokens" else processor.decode(tokens)

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
    "PixelGPTStaticCache",
    "PixelGPTPreTrainedModel",
    "PixelGPTModel",
    "PixelGPTForImageGeneration",
    "PixelGPTForImageClassification",
]
