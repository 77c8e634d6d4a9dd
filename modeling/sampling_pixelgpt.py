"""PixelGPT's sampling engine, kept apart from the network as transformers keeps `GenerationMixin` apart from its
models: the sampling options, the draw (temperature, top-k, top-p, guidance), the loop that fills an image k tokens
per forward pass in any generation order, exact speculative sampling, and the `generate()` reference path. The
loops keep their keys and values in PixelGPT's own caches (`cache_pixelgpt.py`).

It calls the model only through `model(...)` (and `model.generate`), so this file imports nothing of the network.
"""

import functools
import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, UnbatchedClassifierFreeGuidanceLogitsProcessor

from .cache_pixelgpt import PixelGPTRaggedCache, PixelGPTStaticCache


def check_count(name: str, value) -> None:
    """The one positive-integer check of the image methods (counts, batch sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


@dataclass
class SamplingOptions:
    """Every sampling argument the image methods share, checked once by `check`.

    temperature: softmax temperature; 0 is greedy (argmax) decoding.
    top_k / top_p: optional top-k and nucleus filtering (None or 0 / 1.0 disable them).
    guidance_scale: classifier-free guidance towards class labels or a prompt (1 = none), `uncond + s * (cond -
        uncond)` on the log-probabilities, as generate()'s `guidance_scale`; "uncond" is the unconditional start
        token and the empty (or negative) prompt, with the same condition image.
    tokens_per_step: 1, or the model's `parallel_tokens` k: k tokens per pass from the k-ahead predictions.
    exact: with tokens_per_step = k > 1, exact speculative sampling: the k-ahead predictions are drafts that the
        one-token predictions verify, so images are distributed exactly as one-token sampling draws them (1 to k
        tokens per pass). Without it, k-ahead decoding is approximate: k tokens drawn independently per pass
        (exactly k times fewer passes, at a measured cost in quality).
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
    exact: bool = False
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

    def check(self, config, class_labels=None, prompt=None) -> None:
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
        if self.guidance_scale != 1.0 and not (config.num_classes or config.is_text_conditional):
            raise ValueError("`guidance_scale` guides towards class labels or a prompt: it needs a class-conditional "
                             "or text model (trained with --class_conditional or --text_conditional).")
        if self.guidance_scale != 1.0 and class_labels is None and prompt is None:
            what = "a `prompt`" if config.is_text_conditional else "`class_labels`"
            raise ValueError(f"`guidance_scale` guides towards {what}: give {what}, or keep guidance_scale=1 for "
                             "unconditional samples.")
        if config.is_text_conditional and (self.use_generate or self.exact):
            raise ValueError("Text models sample with the default loop: `use_generate=True` and `exact=True` do not "
                             "read a prompt.")
        if not isinstance(self.exact, bool):
            raise ValueError(f"`exact` must be True or False, got {self.exact!r}.")
        if self.use_generate and self.tokens_per_step != 1:
            raise ValueError("`use_generate=True` draws one token per pass; use tokens_per_step=1.")
        if self.use_generate and config.task != "generate":
            raise ValueError(f"`use_generate=True` samples in raster order without a condition image; this model's "
                             f"task is {config.task!r}. Use the default sampling loop.")
        if self.generate_kwargs and not self.use_generate:
            raise ValueError(f"{sorted(self.generate_kwargs)} are generate() arguments; pass use_generate=True.")


def warped_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> torch.Tensor:
    """The distribution one-token sampling draws from: softmax after generate()'s temperature -> top-k -> top-p
    warpers, `(..., V)` float32; temperature 0 is the one-hot argmax."""
    scores = logits.float()
    if temperature == 0:
        return F.one_hot(scores.argmax(-1), scores.shape[-1]).float()
    return _warp(scores, temperature, top_k, top_p).softmax(-1)


def _warp(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
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
    return scores


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
    probs = _warp(scores, temperature, top_k, top_p).softmax(-1)
    if as_generate:
        return torch.multinomial(probs.flatten(0, -2), 1).view(probs.shape[:-1])
    return draw_from(probs)


def draw_from(probs: torch.Tensor) -> torch.LongTensor:
    """One token per row of `(..., V)` probabilities (unnormalised is fine) by inverting the cumulative sum with
    one uniform number per row."""
    cdf = probs.cumsum(-1)  # (..., V), non-decreasing
    total = cdf[..., -1:]
    # u in [0, total): the first entry of the cdf above u is a token of non-zero probability.
    u = torch.minimum(torch.rand(total.shape, device=cdf.device) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


@contextmanager
def packed_weights(model):
    """For one sampling loop, every layer that can pre-arrange its weight for repeated inference does so
    (`PixelGPTLinear.pack`: oneDNN's layout on CPU in float32, ~15 ms for a 256-wide, 8-layer model); released
    afterwards, so no stale copy outlives a weight update."""
    # Only layers not packed yet: a caller that packs once for many loops keeps its packing.
    layers = [module for module in model.modules() if hasattr(module, "pack") and module.packed is None]
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
                  progress=None, text_ids: torch.LongTensor | None = None,
                  negative_text_ids: torch.LongTensor | None = None) -> torch.LongTensor:
    """The static-cache loop: one forward pass per `options.tokens_per_step` tokens. Draws from torch's global RNG.

    start_ids `(B,)` start or class tokens; known `(B, N)` image tokens in raster index, -1 where one is to be drawn
    (known tokens are kept); order `(B, N)` generation order, a permutation of token indices (default raster; put
    the known tokens first: the leading known tokens of every row are read in one pass); condition_ids
    `(B, condition_size**2)` for conditional models; text_ids `(B, max_text_length)` the prompts of text models
    (guidance steers away from `negative_text_ids`, default the empty prompt). Uses `temperature`, `top_k`, `top_p`,
    `guidance_scale` and `tokens_per_step` of `options`. Returns `(B, 1 + N)`: the start tokens, then the image
    tokens in raster order.
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
    if guided:  # conditional rows first, then the same rows unconditioned: start token, empty or negative prompt
        if text_ids is None and condition_ids is not None:
            raise ValueError("Classifier-free guidance steers towards class labels or a prompt, not a condition "
                             "image.")
        starts = torch.cat([start_ids, torch.full_like(start_ids, config.start_token_id)])
        condition_ids = None if condition_ids is None else condition_ids.repeat(2, 1)  # the same image both ways
        if text_ids is not None:
            if negative_text_ids is None:
                negative_text_ids = torch.full_like(text_ids, config.text_pad_token_id)
            text_ids = torch.cat([text_ids, negative_text_ids])
    # Inference mode skips autograd's per-op bookkeeping (~5% of a pass on CPU); the tensors returned are made
    # after it, so callers get ordinary tensors.
    with torch.inference_mode(), packed_weights(model):
        cache = PixelGPTStaticCache(config, starts.shape[0], config.num_prefix_tokens + k + n, device, model.dtype)
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
            # Start, condition and prompt tokens go with every call (class-embedding rows add the start, aligned
            # rows read the condition, every row of a text model adds its prompt); the model puts condition and
            # prompt rows first only in the call that begins the cache.
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, input_positions=held,
                           target_positions=predicted, start_ids=starts, condition_ids=condition_ids,
                           text_ids=text_ids).logits[:, -m:]  # (B', m, V)
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


def speculative_accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.LongTensor,
                       uniforms: torch.Tensor) -> torch.BoolTensor:
    """Accept each draft with probability min(1, p(y) / q(y)) (Leviathan et al. 2023; Chen et al. 2023): `p`, `q`
    `(..., V)` the target and draft distributions, `drafts` `(...)` drawn from `q`, `uniforms` `(...)` in [0, 1)."""
    p_y = p.gather(-1, drafts[..., None])[..., 0]
    q_y = q.gather(-1, drafts[..., None])[..., 0]
    return uniforms * q_y < p_y


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What replaces a rejected draft: max(0, p - q), normalised. Together with `speculative_accept` every token
    is distributed exactly as `p`. Where p <= q everywhere (p == q) no draft is ever rejected; `p` is returned."""
    remainder = (p - q).clamp(min=0)
    total = remainder.sum(-1, keepdim=True)
    return torch.where(total > 0, remainder / total.clamp(min=torch.finfo(p.dtype).tiny), p)


class PixelGPTSpeculativeBatch:
    """One batch of exact speculative sampling (`exact_sample_tokens`): the model read in its two views, and the
    per-image state, one slot per image still being drawn (`retire` moves the last unfinished images into the
    slots of complete ones; `image_of` maps slots to images). A slot holds the image's accepted tokens before its
    `frontier` and its current drafts after it, the draft distribution q of each position (`q_store`), and, for
    the progress bar, the tokens not given before each position (`unknown_before`)."""

    def __init__(self, model, start_ids: torch.LongTensor, options: SamplingOptions, known: torch.LongTensor,
                 prefix: int, progress=None):
        config, device, batch = model.config, start_ids.device, start_ids.shape[0]
        self.model, self.options, self.progress, self.device = model, options, progress, device
        n, k = config.num_image_tokens, options.tokens_per_step
        self.n, self.k = n, k
        guided = options.guidance_scale != 1.0
        self.views = [start_ids, torch.full_like(start_ids, config.start_token_id)] if guided else [start_ids]
        self.lanes = 2 * len(self.views)  # cache rows per image: the one-token view (cond[, uncond]), then k-ahead
        self.seq = known.clamp(min=0)  # (B, N)
        self.known, self.is_known = known.clone(), known >= 0
        self.lane_starts = torch.stack(self.views * 2, dim=1)  # (B, lanes)
        self.spare = n + k  # a slot of q_store that is written to and never read
        self.q_store = torch.zeros(batch, n + k + 1, config.vocab_size, device=device)  # q for each position
        self.frontier = torch.full((batch,), prefix + 1, device=device)  # tokens fixed so far, per image
        self.unknown_before = F.pad((~self.is_known).long().cumsum(1), (1, 0))  # (B, N + 1)
        self.image_of = torch.arange(batch, device=device)
        self.images = torch.empty_like(self.seq)

    def run(self, cache, held_p, held_q):
        """One pass over the first `len(held_p)` slots; `held_*` `(A, m)` the token index each row holds
        (negative: start rows) in each view. Returns the warped distributions of both views, `(A, m, V)` each."""
        active, views, options = held_p.shape[0], len(self.views), self.options
        held = torch.stack([held_p] * views + [held_q] * views, dim=1)  # (A, lanes, m)
        tokens = self.seq[:active, None].expand(-1, self.lanes, -1).gather(2, held.clamp(0, self.n - 1))
        ids = torch.where(held < 0, self.lane_starts[:active, :, None], tokens)  # (A, lanes, m)
        targets = torch.stack([held_p + 1] * views + [held_q + self.k] * views, dim=1)
        logits = self.model(input_ids=ids.flatten(0, 1), past_key_values=cache, use_cache=True,
                            input_positions=held.flatten(0, 1), target_positions=targets.flatten(0, 1),
                            start_ids=self.lane_starts[:active].flatten()).logits.float()
        logits = logits.view(active, 2, views, *logits.shape[1:])  # (A, view, cond[/uncond], m, V)
        if views == 2:  # guided
            cond, uncond = logits[:, :, 0].log_softmax(-1), logits[:, :, 1].log_softmax(-1)
            logits = uncond + options.guidance_scale * (cond - uncond)  # (A, 2, m, V)
        else:
            logits = logits[:, :, 0]
        probs = warped_probs(logits, options.temperature, options.top_k, options.top_p)
        return probs[:, 0], probs[:, 1]

    def keep(self, cache, counts_p, counts_q):
        views = len(self.views)
        cache.keep(torch.stack([counts_p] * views + [counts_q] * views, dim=1).flatten())

    def first_pass(self, cache, prefix: int) -> None:
        """The start row and the known prefix in the one-token view (then padding), the k start rows and the
        prefix in the k-ahead view: it draws the first free token and q for the next k - 1 positions."""
        batch, m = len(self.seq), self.k + prefix
        index = torch.arange(m, device=self.device).expand(batch, m)
        p, q = self.run(cache, (index - 1).clamp(max=prefix - 1), index - self.k)
        self.keep(cache, torch.full((batch,), prefix + 1, device=self.device),
                  torch.full((batch,), m, device=self.device))
        self.q_store[:, :m] = q
        self.seq[:, prefix] = torch.where(self.is_known[:, prefix], self.known[:, prefix], draw_from(p[:, prefix]))
        if self.progress is not None:
            self.progress.update(int((~self.is_known[:, : prefix + 1]).sum()))

    def retire(self, cache, active: int) -> int:
        """Complete images among the first `active` slots leave the batch (their tokens go to `images`): the last
        unfinished images move into their slots, with their cache rows. Returns how many slots stay in use."""
        finished = self.frontier[:active] >= self.n
        remaining = active - int(finished.sum())
        if remaining == active:
            return active
        self.images[self.image_of[:active][finished]] = self.seq[:active][finished]
        dst = finished[:remaining].nonzero()[:, 0]  # finished slots that unfinished images move into
        src = (~finished[remaining:active]).nonzero()[:, 0] + remaining
        for state in (self.seq, self.known, self.lane_starts, self.q_store, self.frontier, self.unknown_before,
                      self.image_of):
            state[dst] = state[src]

        def cache_rows(slots):  # slot s holds cache rows s * lanes ... s * lanes + lanes - 1
            return (slots[:, None] * self.lanes + torch.arange(self.lanes, device=self.device)).flatten()

        cache.retire(remaining * self.lanes, cache_rows(src), cache_rows(dst))
        return remaining

    def advance(self, cache, active: int) -> None:
        """One pass of drafting and verification over the first `active` slots."""
        n, k, device = self.n, self.k, self.device
        seq, known, q_store, frontier, unknown_before = (
            state[:active] for state in (self.seq, self.known, self.q_store, self.frontier, self.unknown_before))
        rows = torch.arange(len(frontier), device=device)
        num_drafts = (n - 1 - frontier).clamp(min=0, max=k - 1)  # (A,)
        # At least two rows: a one-row pass (no drafts left) would make `torch.compile` specialise a new graph
        # mid-run (size-1 dimensions are static), several seconds; the spare row is dropped like a rejection.
        m = max(int(num_drafts.max()) + 1, 2)
        steps = torch.arange(m - 1, device=device)
        draft_pos = (frontier[:, None] + steps).clamp(max=n - 1)  # (A, m - 1)
        drafting = steps < num_drafts[:, None]
        known_drafts = known.gather(1, draft_pos)  # (A, m - 1): -1 where drawn
        q_drafts = q_store[rows[:, None], draft_pos]  # (A, m - 1, V)
        # Padding positions (past an image's drafts) may have no q yet: their "drafts" are placeholders (0 or the
        # given token), never kept nor written to `seq`.
        drafts = torch.where(drafting & (known_drafts < 0), draw_from(q_drafts), known_drafts.clamp(min=0))
        seq.scatter_(1, draft_pos, torch.where(drafting, drafts, seq.gather(1, draft_pos)))
        held = (frontier[:, None] - 1 + torch.arange(m, device=device)).clamp(max=n - 1)  # (A, m)
        p, q = self.run(cache, held, held)
        accepted = speculative_accept(p[:, : m - 1], q_drafts, drafts, torch.rand(drafts.shape, device=device))
        accepted = (accepted | (known_drafts >= 0)) & drafting
        num_accepted = accepted.long().cumprod(1).sum(1)  # (A,): drafts kept before the first rejection
        rejected = num_accepted < num_drafts
        q_next = q_drafts[rows, num_accepted.clamp(max=m - 2)]  # (A, V): q of the first rejected draft
        # A rejected draft is redrawn from the residual; after all drafts, the last row's p gives one more.
        new = draw_from(residual(p[rows, num_accepted], q_next * rejected[:, None]))
        new_pos = frontier + num_accepted
        known_new = known[rows, new_pos]
        seq[rows, new_pos] = torch.where(known_new >= 0, known_new, new)
        # q of the kept k-ahead rows, for later drafts; other rows are written to a spare slot, never read
        # (indexing by a boolean mask instead would cost a device sync and a copy per pass).
        q_pos = held + k  # (A, m): the position each k-ahead row predicts
        kept_rows = (torch.arange(m, device=device) <= num_accepted[:, None]) & (q_pos < n)
        q_store[rows[:, None], torch.where(kept_rows, q_pos, self.spare)] = q
        counts = num_accepted + 1
        self.keep(cache, counts, counts)
        if self.progress is not None:
            self.progress.update(int((unknown_before.gather(1, (frontier + counts)[:, None])
                                      - unknown_before.gather(1, frontier[:, None])).sum()))
        frontier += counts


def exact_sample_tokens(model, start_ids: torch.LongTensor, options: SamplingOptions,
                        known: torch.LongTensor | None = None, progress=None) -> torch.LongTensor:
    """Exact speculative sampling from a model trained with `parallel_tokens = k`: images distributed exactly as
    one-token sampling draws them, in fewer forward passes. Raster order; draws from torch's global RNG.

    The model is read in two views at once, each with its own cache rows (one batch, `PixelGPTRaggedCache`): the
    one-token view (row holds token t, predicts t + 1) gives the target distributions p, the k-ahead view (row
    holds t, predicts t + k) the drafts' q. A pass feeds the last accepted token and up to k - 1 drafts drawn from q
    to both views. The one-token rows score the drafts: each is kept with probability min(1, p/q) until the first
    rejection, which is redrawn from max(0, p - q); if all are kept, the last row adds one more token from p. The
    k-ahead rows of the kept tokens give q for the next drafts, which thus depend only on accepted tokens. Every
    pass fixes between 1 and k tokens per image, and the images of a batch advance at their own pace; a complete
    image leaves the batch, so later passes compute only the images still being drawn.
    `known` `(B, N)`: tokens to keep (-1 where drawn). Returns `(B, 1 + N)`.
    """
    config, device = model.config, start_ids.device
    n, k, batch = config.num_image_tokens, options.tokens_per_step, start_ids.shape[0]
    if k < 2 or k != config.parallel_tokens:
        raise ValueError(f"Exact speculative sampling drafts with the model's k-ahead predictions: it needs "
                         f"tokens_per_step = parallel_tokens > 1 (this model: {config.parallel_tokens}), got {k}.")
    if known is None:
        known = torch.full((batch, n), -1, dtype=torch.long, device=device)
    prefix = leading_known(known)
    if prefix == n:
        return torch.cat([start_ids[:, None], known], dim=1)
    state = PixelGPTSpeculativeBatch(model, start_ids, options, known, prefix, progress)
    with torch.inference_mode(), packed_weights(model):
        cache = PixelGPTRaggedCache(config, batch * state.lanes, n + 2 * k + 1, device, model.dtype)
        state.first_pass(cache, prefix)
        active = state.retire(cache, batch)
        while active:
            state.advance(cache, active)
            active = state.retire(cache, active)
    return torch.cat([start_ids[:, None], state.images], dim=1)


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

    class _Tick(LogitsProcessor):  # advances the progress bar once per generated position
        def __call__(self, ids, scores):
            if progress is not None:
                progress.update(ids.shape[0])
            return scores

    processors = LogitsProcessorList([_Tick()])
    if options.guidance_scale != 1.0:
        # generate()'s own guidance processor (what `guidance_scale=` builds, in the same place), given the
        # unconditional start tokens for every call: class-embedding models add them to every row, and the
        # processor's calls after the first hold only the new row.
        unconditional = input_ids.clone()
        unconditional[:, 0] = config.start_token_id
        processors.insert(0, UnbatchedClassifierFreeGuidanceLogitsProcessor(
            options.guidance_scale, functools.partial(model, start_ids=unconditional[:, 0]),
            unconditional_ids=unconditional, use_cache=options.generate_kwargs.get("use_cache", True)))
    return model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=config.num_image_tokens - input_ids.shape[1] + 1,
        logits_processor=processors,
        pad_token_id=None,
        eos_token_id=None,
        **sampling,
        **options.generate_kwargs,
    )


# The loops, their options and the draw; the caches are in cache_pixelgpt.py.
__all__ = ["SamplingOptions", "check_count", "draw_from", "draw_tokens", "exact_sample_tokens", "generate_reference",
           "leading_known", "packed_weights", "residual", "sample_tokens", "speculative_accept", "warped_probs"]
