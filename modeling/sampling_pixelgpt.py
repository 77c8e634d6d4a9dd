"""PixelGPT's sampling engine, kept apart from the network as transformers keeps `GenerationMixin` apart from its
models: the sampling options, the static KV cache, the draw (temperature, top-k, top-p, guidance), the loop that
fills an image k tokens per forward pass in any generation order, and the `generate()` reference path.

It calls the model only through `model(...)` (and `model.generate`), so this file imports nothing of the network.
"""

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList


def check_count(name: str, value) -> None:
    """The one positive-integer check of the image methods (counts, batch sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


@dataclass
class SamplingOptions:
    """Every sampling argument the image methods share, checked once by `check`.

    temperature: softmax temperature; 0 is greedy (argmax) decoding.
    top_k / top_p: optional top-k and nucleus filtering (None or 0 / 1.0 disable them).
    guidance_scale: classifier-free guidance towards class labels (1 = none), `uncond + s * (cond - uncond)` on the
        log-probabilities, as generate()'s `guidance_scale`.
    tokens_per_step: 1, or the model's `parallel_tokens` (k-ahead parallel decoding, k times fewer passes).
    generator: a `torch.Generator`; the same state gives the same images.
    batch_size: images sampled together (with a fixed generator, another batch size draws other images).
    show_progress: a tqdm bar over the image tokens to draw.
    use_generate: sample through transformers' `generate()` (one token per pass) instead of the static-cache loop;
        both give the same tokens under the same generator.
    output_type: "pil" (list of PIL images) or "tokens" (`LongTensor` `(B, 1 + N)`).
    generate_kwargs: further arguments for `generate()` (only with `use_generate=True`).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0
    tokens_per_step: int = 1
    generator: torch.Generator | None = None
    batch_size: int = 16
    show_progress: bool = True
    use_generate: bool = False
    output_type: str = "pil"
    generate_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "SamplingOptions":
        """The options among a method's keyword arguments; any other keyword is a `generate()` argument."""
        names = set(cls.__dataclass_fields__) - {"generate_kwargs"}
        return cls(**{k: v for k, v in kwargs.items() if k in names},
                   generate_kwargs={k: v for k, v in kwargs.items() if k not in names})

    def check(self, config, class_labels=None) -> None:
        """Raise a ValueError naming the first argument this model cannot sample with."""
        check_count("batch_size", self.batch_size)
        for name in ("temperature", "guidance_scale") + (("top_p",) if self.top_p is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 = greedy), got {self.temperature}.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"`top_k` must be a non-negative int or None, got {self.top_k!r}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}.")
        if self.output_type not in ("pil", "tokens"):
            raise ValueError(f"`output_type` must be 'pil' or 'tokens', got {self.output_type!r}.")
        allowed_steps = sorted({1, config.parallel_tokens})
        if self.tokens_per_step not in allowed_steps:
            raise ValueError(f"`tokens_per_step` must be one of {allowed_steps} for this model (it was trained with "
                             f"parallel_tokens={config.parallel_tokens}), got {self.tokens_per_step!r}.")
        if self.guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0 (1 = no guidance), got {self.guidance_scale}.")
        if self.guidance_scale != 1.0 and (class_labels is None or not config.num_classes):
            raise ValueError("`guidance_scale` guides towards class labels: it needs `class_labels` and a "
                             "class-conditional model (trained with --class_conditional).")
        if self.use_generate and self.tokens_per_step != 1:
            raise ValueError("`use_generate=True` draws one token per pass; use tokens_per_step=1.")
        if self.use_generate and config.task != "generate":
            raise ValueError(f"`use_generate=True` samples in raster order without a condition image; this model's "
                             f"task is {config.task!r}. Use the default sampling loop.")
        if self.generate_kwargs and not self.use_generate:
            raise ValueError(f"{sorted(self.generate_kwargs)} are generate() arguments; pass use_generate=True.")


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


def draw_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                as_generate: bool = True) -> torch.LongTensor:
    """Sample one token per row of `(B, m, V)` logits. Mirrors generate()'s temperature -> top-k -> top-p warpers
    and, with `as_generate`, its `torch.multinomial` draw, so both paths give the same tokens under the same seed.
    Without it (k-ahead decoding, which generate() cannot do) the draw inverts the cumulative distribution with one
    uniform number per token: the same distribution, for a fraction of the cost of multinomial, which draws an
    exponential number per vocabulary entry (~5% of a k = 8 pass on CPU)."""
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


@contextmanager
def packed_weights(model):
    """For one sampling loop, every layer that can pre-arrange its weight for repeated inference does so
    (`PixelGPTLinear.pack`: oneDNN's layout on CPU in float32, ~15 ms for a 256-wide, 8-layer model); released
    afterwards, so no stale copy outlives a weight update."""
    layers = [module for module in model.modules() if hasattr(module, "pack")]
    try:
        for layer in layers:
            layer.pack()
        yield
    finally:
        for layer in layers:
            layer.unpack()


def leading_known(known_seq: torch.LongTensor) -> int:
    """How many tokens at the start of the generation order are known (>= 0) in every row."""
    return int((known_seq >= 0).long().cumprod(dim=1).sum(dim=1).min()) if known_seq.numel() else 0


def sample_tokens(model, start_ids: torch.LongTensor, options: SamplingOptions, known: torch.LongTensor | None = None,
                  order: torch.LongTensor | None = None, condition_ids: torch.LongTensor | None = None,
                  progress=None) -> torch.LongTensor:
    """The static-cache loop: one forward pass per `options.tokens_per_step` tokens. Draws from torch's global RNG.

    start_ids `(B,)` start or class tokens; known `(B, N)` image tokens in raster index, -1 where one is to be drawn
    (known tokens are kept); order `(B, N)` generation order, a permutation of token indices (default raster; put
    the known tokens first: the leading known tokens of every row are read in one pass); condition_ids
    `(B, condition_size**2)` for conditional models. Uses `temperature`, `top_k`, `top_p`, `guidance_scale` and
    `tokens_per_step` of `options`. Returns `(B, 1 + N)`: the start tokens, then the image tokens in raster order.
    """
    config, device = model.config, start_ids.device
    n, k, batch = config.num_image_tokens, options.tokens_per_step, start_ids.shape[0]
    if order is None:
        order = torch.arange(n, device=device).expand(batch, n)
    elif k != 1:
        raise ValueError("tokens_per_step > 1 (k-ahead decoding) works in raster order only.")
    if known is None:
        known = torch.full((batch, n), -1, dtype=torch.long, device=device)
    known_seq = known.gather(1, order)  # (B, N): in generation order, -1 = to draw
    seq = known_seq.clamp(min=0)
    done = leading_known(known_seq)  # all rows read their first `done` tokens in one pass
    guided = options.guidance_scale != 1.0
    starts = start_ids
    if guided:  # conditional rows first, then the same rows with the unconditional start token
        if condition_ids is not None:
            raise ValueError("Classifier-free guidance is for class labels, not condition images.")
        starts = torch.cat([start_ids, torch.full_like(start_ids, config.start_token_id)])
    num_condition = 0 if condition_ids is None else condition_ids.shape[1]
    # Inference mode skips autograd's per-op bookkeeping (~5% of a pass on CPU); the tensors returned are made
    # after it, so callers get ordinary tensors.
    with torch.inference_mode(), packed_weights(model):
        cache = PixelGPTStaticCache(config, starts.shape[0], num_condition + k + n, device, model.dtype)
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
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, input_positions=held,
                           target_positions=predicted,
                           condition_ids=condition_ids if cached == -k else None).logits[:, -m:]  # (B', m, V)
            if guided:
                cond, uncond = logits[:batch].float().log_softmax(-1), logits[batch:].float().log_softmax(-1)
                logits = uncond + options.guidance_scale * (cond - uncond)
            drawn = draw_tokens(logits, options.temperature, options.top_k, options.top_p,
                                as_generate=k == 1)  # (B, m)
            given = known_seq[:, done : done + m]
            seq[:, done : done + m] = torch.where(given >= 0, given, drawn)
            cached, done = done + m - k, done + m
            if progress is not None:
                progress.update(m * batch)  # the bar counts image tokens
    tokens = torch.empty_like(seq).scatter_(1, order, seq)  # back to raster order
    return torch.cat([start_ids[:, None], tokens], dim=1)


def generate_reference(model, start_ids: torch.LongTensor, prefix: torch.LongTensor | None,
                       options: SamplingOptions, progress=None) -> torch.LongTensor:
    """The same draw through transformers' `generate()` (raster order, one token per pass, a known raster
    `prefix` `(B, P)` continued): the reference the static-cache loop is tested against."""
    config = model.config
    input_ids = start_ids.unsqueeze(1) if prefix is None else torch.cat([start_ids.unsqueeze(1), prefix], 1)
    if input_ids.shape[1] == 1 + config.num_image_tokens:
        return input_ids  # every token is given: nothing to sample
    sampling = dict(do_sample=options.temperature > 0)
    if options.temperature > 0:
        sampling.update(temperature=options.temperature, top_k=options.top_k or 0, top_p=options.top_p or 1.0)
    if options.guidance_scale != 1.0:
        unconditional = input_ids.clone()
        unconditional[:, 0] = config.start_token_id
        sampling.update(guidance_scale=options.guidance_scale, negative_prompt_ids=unconditional)

    class _Tick(LogitsProcessor):  # advances the progress bar once per generated position
        def __call__(self, ids, scores):
            if progress is not None:
                progress.update(ids.shape[0])
            return scores

    return model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=config.num_image_tokens - input_ids.shape[1] + 1,
        logits_processor=LogitsProcessorList([_Tick()]),
        pad_token_id=None,
        eos_token_id=None,
        **sampling,
        **options.generate_kwargs,
    )


__all__ = ["PixelGPTStaticCache", "SamplingOptions", "check_count", "draw_tokens", "generate_reference",
           "leading_known", "packed_weights", "sample_tokens"]
