"""The sampling engine (sampling_pixelgpt.py): the static-cache loop against generate() and against recomputing
everything, the draw, guidance, progress."""

import itertools
import math
from unittest import mock

import pytest
import torch

from pixelgpt.modeling import sampling_pixelgpt
from pixelgpt.modeling.cache_pixelgpt import PixelGPTRaggedCache
from pixelgpt.modeling.layouts_pixelgpt import k_ahead_inputs, random_orders
from pixelgpt.modeling.sampling_pixelgpt import (
    SamplingOptions,
    draw_tokens,
    exact_sample_tokens,
    leading_known,
    residual,
    speculative_accept,
    warped_probs,
)

from conftest import make_conditional, make_model, random_ids


@pytest.mark.parametrize(
    "overrides, sampling",
    [
        (dict(), dict(temperature=1.0)),
        (dict(tokens_per_pixel=3, vocab_size=11, image_size=3), dict(temperature=0.7, top_k=5)),
        (dict(num_classes=2), dict(temperature=1.3, top_p=0.8, class_labels=[1, 0])),
        (dict(num_classes=2, class_embedding=True), dict(temperature=1.3, class_labels=[1, 0])),
    ],
)
def test_static_cache_loop_draws_the_same_tokens_as_generate(overrides, sampling):
    model = make_model(**overrides)
    kwargs = dict(num_images=3, batch_size=2, output_type="tokens", show_progress=False, **sampling)
    fast = model.generate_images(generator=torch.Generator().manual_seed(4), **kwargs)
    reference = model.generate_images(generator=torch.Generator().manual_seed(4), use_generate=True, **kwargs)
    assert torch.equal(fast, reference)


def reference_k_ahead(model, start_ids, k):
    """No cache: recompute every row each step, keep the logits of the rows that predict the next k tokens."""
    n = model.config.num_image_tokens
    tokens = torch.empty(len(start_ids), 0, dtype=torch.long)
    while tokens.shape[1] < n:
        done, m = tokens.shape[1], min(k, n - tokens.shape[1])
        ids = torch.cat([start_ids[:, None], tokens], 1)
        inputs = k_ahead_inputs(torch.cat([ids, torch.zeros_like(ids[:, :1]).expand(-1, n - done)], 1), k)
        inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits[:, done : done + m]
        tokens = torch.cat([tokens, draw_tokens(logits, 1.0, None, None, as_generate=k == 1)], 1)
    return torch.cat([start_ids[:, None], tokens], 1)


@pytest.mark.parametrize("k, class_embedding", [(2, False), (4, False), (7, False), (4, True)])
def test_k_ahead_cached_loop_matches_recomputing_everything(k, class_embedding):
    model = make_model(parallel_tokens=k, num_classes=2, class_embedding=class_embedding)
    start = torch.tensor([model.config.class_token_id(0), model.config.start_token_id, model.config.class_token_id(1)])
    torch.manual_seed(5)
    fast = model.sample_tokens(start, tokens_per_step=k)
    torch.manual_seed(5)
    assert torch.equal(fast, reference_k_ahead(model, start, k))
    assert fast.shape == (3, 26)
    assert not fast.is_inference()  # the loop runs in inference mode; what it returns is an ordinary tensor
    fast[:, 0] = model.config.start_token_id  # so callers may edit it in place


@pytest.mark.parametrize("warp", [dict(top_k=None, top_p=None), dict(top_k=4, top_p=None), dict(top_k=None, top_p=0.7)])
def test_k_ahead_draw_follows_the_warped_distribution(warp):
    """k > 1 draws by inverting the cdf (one uniform per token) instead of generate()'s multinomial: the same
    distribution, and never a token that the warpers removed."""
    logits = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.2, -0.4, 0.8]) * 1.5
    scores = logits.clone()
    if warp["top_k"]:
        scores[scores < scores.topk(warp["top_k"]).values[-1]] = -float("inf")
    if warp["top_p"]:
        probs, order = scores.softmax(-1).sort(descending=True)
        keep = probs.cumsum(-1) - probs < warp["top_p"]  # the smallest head of the ranking that reaches top_p
        scores[order[~keep]] = -float("inf")
    expected = scores.softmax(-1)
    torch.manual_seed(0)
    drawn = draw_tokens(logits.expand(4000, 5, 7), 1.0, as_generate=False, **warp)  # (4000, 5)
    assert drawn.shape == (4000, 5)
    frequency = torch.bincount(drawn.flatten(), minlength=7) / drawn.numel()
    assert (frequency[expected == 0] == 0).all()
    torch.testing.assert_close(frequency, expected, atol=0.012, rtol=0)  # 20,000 draws: ~4 standard errors


def test_tokens_per_step_must_match_the_training(model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match=r"must be one of \[1\].*parallel_tokens=1"):
        model.generate_images(tokens_per_step=4, image_processor=processor, show_progress=False)
    with pytest.raises(ValueError, match="generate\\(\\) arguments"):
        model.generate_images(image_processor=processor, show_progress=False, num_beams=2)


def test_progress_bar_counts_every_image_token(model_and_processor):
    model, processor = model_and_processor

    class Bar:
        n = 0

        def update(self, amount):
            self.n += amount

    for kwargs in (dict(), dict(use_generate=True)):
        bar = Bar()
        with mock.patch("pixelgpt.modeling.tasks_pixelgpt.tqdm", return_value=mock.MagicMock(update=bar.update)):
            model.generate_images(3, batch_size=2, output_type="tokens", **kwargs)
        assert bar.n == 3 * model.config.num_image_tokens, kwargs


def test_exact_progress_bar_counts_the_tokens_drawn():
    """Exact sampling fixes a different number of tokens per image and pass, and images leave the batch as they
    finish: the bar still counts each drawn token once, and no given one."""
    model = make_model(vocab_size=64, image_size=5, parallel_tokens=4)

    class Bar:
        n = 0

        def update(self, amount):
            self.n += amount

    bar = Bar()
    with mock.patch("pixelgpt.modeling.tasks_pixelgpt.tqdm", return_value=mock.MagicMock(update=bar.update)):
        model.generate_images(5, batch_size=4, output_type="tokens", tokens_per_step=4, exact=True)
    assert bar.n == 5 * 25
    known = torch.full((4, 25), -1)
    known[:, :3] = 1
    known[torch.arange(4), torch.tensor([5, 9, 14, 24])] = 2  # a given token at another place in each image
    known[1, 10:] = 3  # image 1 has only 7 tokens to draw: it finishes early
    bar = Bar()
    exact_sample_tokens(model, torch.full((4,), model.config.start_token_id), SamplingOptions(tokens_per_step=4),
                        known=known, progress=bar)
    assert bar.n == int((known < 0).sum())


@pytest.mark.parametrize("class_embedding", [False, True], ids=["start_token_only", "class_every_row"])
def test_guided_static_cache_loop_matches_generate_with_cfg(class_embedding):
    model = make_model(num_classes=3, class_embedding=class_embedding)
    kwargs = dict(num_images=2, class_labels=[2, 0], guidance_scale=2.5, temperature=0.9, output_type="tokens",
                  show_progress=False, batch_size=3)
    fast = model.generate_images(generator=torch.Generator().manual_seed(8), **kwargs)
    reference = model.generate_images(generator=torch.Generator().manual_seed(8), use_generate=True, **kwargs)
    assert torch.equal(fast, reference)


def test_guidance_scale_zero_is_unconditional_and_scale_one_is_conditional():
    model = make_model(num_classes=3)
    greedy = dict(temperature=0, output_type="tokens", show_progress=False)
    unconditional = model.generate_images(2, **greedy)
    conditional = model.generate_images(2, class_labels=1, **greedy)
    assert not torch.equal(conditional[:, 1:], unconditional[:, 1:])
    assert torch.equal(model.generate_images(2, class_labels=1, guidance_scale=0.0, **greedy)[:, 1:],
                       unconditional[:, 1:])
    assert torch.equal(model.generate_images(2, class_labels=1, guidance_scale=1.0, **greedy), conditional)


def test_guidance_needs_classes():
    model = make_model()
    with pytest.raises(ValueError, match="needs a class-conditional or text model"):
        model.generate_images(guidance_scale=3.0, output_type="tokens", show_progress=False)
    model = make_model(num_classes=3)
    with pytest.raises(ValueError, match="give `class_labels`, or keep guidance_scale=1 for unconditional"):
        model.generate_images(guidance_scale=3.0, output_type="tokens", show_progress=False)


def test_k_ahead_completion_matches_recomputing_everything():
    model = make_model(parallel_tokens=4, vocab_size=256, image_size=5)
    prefix = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    start = torch.full((2,), model.config.start_token_id)
    torch.manual_seed(2)
    fast = model.sample_tokens(start, tokens_per_step=4, prefix=prefix)
    assert torch.equal(fast[:, 1:8], prefix)
    # Reference: recompute all rows for every step, as in reference_k_ahead, starting after the prefix.
    torch.manual_seed(2)
    tokens = prefix.clone()
    while tokens.shape[1] < 25:
        done, m = tokens.shape[1], min(4, 25 - tokens.shape[1])
        ids = torch.cat([start[:, None], tokens, torch.zeros(2, 25 - done, dtype=torch.long)], 1)
        inputs = k_ahead_inputs(ids, 4)
        inputs.pop("labels")
        logits = model(**inputs).logits[:, done : done + m]
        tokens = torch.cat([tokens, draw_tokens(logits, 1.0, None, None, as_generate=False)], 1)
    assert torch.equal(fast[:, 1:], tokens)


def reference_fill(model, start_ids, known, order, condition_ids=None):
    """No cache: recompute the whole sequence for every drawn token, in `order`, keeping the known tokens."""
    n = model.config.num_image_tokens
    seq = known.gather(1, order)
    for t in range(n):
        ids = torch.cat([start_ids[:, None], seq[:, :t].clamp(min=0)], 1)
        held = torch.cat([torch.full_like(start_ids[:, None], -1), order[:, :t]], 1)
        logits = model(input_ids=ids, input_positions=held, target_positions=order[:, : t + 1],
                       condition_ids=condition_ids, use_cache=False).logits[:, -1:]
        if (seq[:, t] < 0).any() or t >= leading_known(seq):
            drawn = draw_tokens(logits, 1.0, None, None)[:, 0]
            seq[:, t] = torch.where(seq[:, t] >= 0, seq[:, t], drawn)
    return torch.empty_like(seq).scatter_(1, order, seq)


@pytest.mark.parametrize("overrides", [dict(), dict(vocab_size=11, image_size=3, tokens_per_pixel=3)],
                         ids=["one_token", "rgb8_subpixels"])
def test_any_order_cached_loop_matches_recomputing_everything(overrides):
    model = make_model(task="inpaint", **overrides)
    n, pixels = model.config.num_image_tokens, model.config.image_size ** 2
    known = random_ids(model.config, batch=3)[:, 1:]
    masks = torch.rand(3, pixels, generator=torch.Generator().manual_seed(2)) < 0.6  # a different mask per row
    known = known.masked_fill(model._token_mask(masks.view(3, *(model.config.image_size,) * 2)), -1)
    order = random_orders(masks, model.config.tokens_per_pixel, torch.Generator().manual_seed(3))
    start = torch.full((3,), model.config.start_token_id)
    torch.manual_seed(7)
    fast = model.sample_tokens(start, known=known, order=order)
    torch.manual_seed(7)
    assert torch.equal(fast[:, 1:], reference_fill(model, start, known, order))
    assert torch.equal(fast[:, 1:][known >= 0], known[known >= 0])
    assert fast.shape == (3, 1 + n)


@pytest.mark.parametrize("task", ["colorize", "upscale"])
@pytest.mark.parametrize("aligned, prefix", [(False, True), (True, True), (True, False)],
                         ids=["prefix", "aligned_and_prefix", "aligned_only"])
def test_conditional_cached_loop_matches_recomputing_everything(task, aligned, prefix):
    model, _ = make_conditional(task, aligned_condition=aligned, condition_prefix=prefix)
    start = torch.full((2,), model.config.start_token_id)
    condition = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    known = torch.full((2, 36), -1)
    order = torch.arange(36).expand(2, 36)
    torch.manual_seed(3)
    fast = model.sample_tokens(start, condition_ids=condition)
    torch.manual_seed(3)
    assert torch.equal(fast[:, 1:], reference_fill(model, start, known, order, condition))


# ------------------------------------------------------------------------------------- exact speculative sampling
def test_accept_and_resample_rule_against_hand_computed_distributions():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    # min(1, p/q) = 1, 0.6, 2/3: accepted exactly when u < that
    drafts = torch.tensor([0, 1, 1, 2, 2])
    u = torch.tensor([0.999, 0.59, 0.61, 0.66, 0.67])
    assert speculative_accept(p.expand(5, 3), q.expand(5, 3), drafts, u).tolist() == [True, True, False, True, False]
    torch.testing.assert_close(residual(p, q), torch.tensor([1.0, 0.0, 0.0]))  # max(0, p - q) = (0.3, 0, 0)
    torch.testing.assert_close(residual(p, p), p)  # nothing is ever rejected there
    # One step as a whole: draft y ~ q, keep it with min(1, p/q), else the residual. Integrated over u: exactly p.
    uniforms = (torch.arange(3000) + 0.5) / 3000
    out = torch.zeros(3)
    for y in range(3):
        kept = speculative_accept(p.expand(3000, 3), q.expand(3000, 3), torch.full((3000,), y), uniforms).float()
        out[y] += q[y] * kept.mean()
        out += q[y] * (1 - kept.mean()) * residual(p, q)
    torch.testing.assert_close(out, p, atol=1e-3, rtol=0)


def tiny_k_ahead_model(**overrides):
    """Three token values, four tokens per image (81 images), logits scaled up so that the one-token and the
    k-ahead distributions are sharp and differ: a wrong rule shows at once."""
    model = make_model(vocab_size=3, image_size=2, hidden_size=16, num_attention_heads=2, intermediate_size=24,
                       parallel_tokens=2, **overrides)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


def one_token_distribution(model, options, start):
    """Probability of each of the 81 images under one-token sampling with these options (warpers, guidance)."""
    images = torch.tensor(list(itertools.product(range(3), repeat=4)))
    ids = torch.cat([torch.full((len(images), 1), start), images], 1)
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
        if options.guidance_scale != 1.0:
            uncond = model(ids.index_fill(1, torch.tensor([0]), model.config.start_token_id)).logits[:, :-1].float()
            cond, uncond = logits.log_softmax(-1), uncond.log_softmax(-1)
            logits = uncond + options.guidance_scale * (cond - uncond)
    probs = warped_probs(logits, options.temperature, options.top_k, options.top_p)
    return images, probs.gather(-1, images[..., None])[..., 0].prod(1)


def chi_square(model, options, start, draws=20000):
    """Pearson's statistic of `draws` exact-mode images against the one-token distribution, and its 0.1% critical
    value (Wilson-Hilferty)."""
    images, expected = one_token_distribution(model, options, start)
    torch.manual_seed(1)
    out = exact_sample_tokens(model, torch.full((draws,), start), options)[:, 1:]
    counts = (out[:, None, :] == images[None]).all(-1).sum(0).float()  # (81,)
    expected = expected * draws
    cells = expected > 5
    stat = float(((counts - expected) ** 2 / expected)[cells].sum())
    dof = int(cells.sum()) - 1
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3
    return stat, critical


@pytest.mark.parametrize("options, class_embedding", [
    (dict(), False), (dict(temperature=0.7, top_k=2), False), (dict(top_p=0.8), False),
    (dict(guidance_scale=2.0), False), (dict(guidance_scale=2.0), True),
], ids=["plain", "temperature_top_k", "top_p", "cfg", "cfg_class_every_row"])
def test_exact_mode_draws_images_with_the_one_token_distribution(options, class_embedding):
    model = tiny_k_ahead_model(num_classes=2, class_embedding=class_embedding)
    start = model.config.class_token_id(1) if "guidance_scale" in options else model.config.start_token_id
    stat, critical = chi_square(model, SamplingOptions(tokens_per_step=2, exact=True, **options), start)
    assert stat < critical, (stat, critical)


@pytest.mark.parametrize("broken", ["always_accept", "resample_from_p", "accept_where_p_exceeds_q"])
def test_the_statistical_test_fails_a_broken_rule(broken):
    model = tiny_k_ahead_model()
    rules = {
        "always_accept": ("speculative_accept", lambda p, q, drafts, u: torch.ones_like(drafts, dtype=torch.bool)),
        "resample_from_p": ("residual", lambda p, q: p),
        "accept_where_p_exceeds_q": ("speculative_accept", lambda p, q, drafts, u: (
            p.gather(-1, drafts[..., None]) >= q.gather(-1, drafts[..., None]))[..., 0]),
    }
    name, rule = rules[broken]
    with mock.patch.object(sampling_pixelgpt, name, rule):
        stat, critical = chi_square(model, SamplingOptions(tokens_per_step=2, exact=True),
                                    model.config.start_token_id)
    assert stat > 10 * critical, (stat, critical)


def test_exact_mode_keeps_known_tokens_and_takes_between_n_over_k_and_n_passes():
    model = make_model(vocab_size=64, image_size=5, parallel_tokens=4)
    calls = []
    forward = model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    known = torch.full((6, 25), -1)
    known[:, :7] = torch.arange(7)  # a known prefix (completion) and one known token further on, its own per image
    known[:, 15] = torch.arange(6) + 9
    known[2, 7:] = torch.randint(0, 64, (18,), generator=torch.Generator().manual_seed(0))  # image 2: all given
    given = known.clone()
    with mock.patch.object(model, "forward", counting):
        out = exact_sample_tokens(model, torch.full((6,), model.config.start_token_id),
                                  SamplingOptions(tokens_per_step=4, exact=True), known=known)
    # Images leave the batch as they finish (image 2 first) and still come back in their places.
    assert torch.equal(known, given) and out.shape == (6, 26) and torch.equal(out[2, 1:], given[2])
    assert (out[:, 1:8] == torch.arange(7)).all() and torch.equal(out[:, 16], given[:, 15])
    assert math.ceil(18 / 4) + 1 <= len(calls) <= 18 + 1  # 18 free tokens, 1 to 4 per pass, plus the first pass
    images = model.generate_images(3, tokens_per_step=4, exact=True, output_type="tokens", show_progress=False,
                                   generator=torch.Generator().manual_seed(0))
    again = model.generate_images(3, tokens_per_step=4, exact=True, output_type="tokens", show_progress=False,
                                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)


def test_ragged_cache_rows_of_different_lengths_match_recomputing_each_image():
    """Images of one batch keep different numbers of rows; what a later pass sees must be each image's own rows:
    the dropped ones, and the never-written slots of shorter rows (zeros), are invisible."""
    model = make_model(vocab_size=13, image_size=4)
    ids = random_ids(model.config, batch=2)  # (2, 17)
    positions = torch.arange(17).expand(2, 17) - 1  # row t holds token t - 1 (start: -1)
    cache = PixelGPTRaggedCache(model.config, 2, 12, torch.device("cpu"), torch.float32)
    assert all(buffer.isfinite().all() for buffer in cache.keys + cache.values)  # masked slots still get 0 * v

    def step(rows):  # (2, m) sequence indices fed to each image
        return model(input_ids=ids.gather(1, rows), past_key_values=cache, use_cache=True,
                     input_positions=positions.gather(1, rows), target_positions=positions.gather(1, rows) + 1).logits

    with torch.no_grad():
        step(torch.tensor([[0, 1, 2], [0, 1, 2]]))
        cache.keep(torch.tensor([3, 1]))  # image 1 drops its rows 1 and 2 (a rejected draft)
        later = step(torch.tensor([[3, 4], [1, 2]]))
        full = model(ids[:, :5]).logits
    torch.testing.assert_close(later[0], full[0, 3:5])
    torch.testing.assert_close(later[1], full[1, 1:3])


def test_ragged_cache_rows_that_move_when_others_retire_keep_their_past():
    """When image 0 leaves the batch, image 2 takes its row: a later pass over the rows in use must see each image's
    own past, as recomputing it would."""
    model = make_model(vocab_size=13, image_size=4)
    ids = random_ids(model.config, batch=3)  # (3, 17)
    positions = torch.arange(17).expand(3, 17) - 1
    cache = PixelGPTRaggedCache(model.config, 3, 12, torch.device("cpu"), torch.float32)

    def step(images, rows):  # rows `(len(images), m)` sequence indices fed to each image in use
        return model(input_ids=ids[images].gather(1, rows), past_key_values=cache, use_cache=True,
                     input_positions=positions[images].gather(1, rows),
                     target_positions=positions[images].gather(1, rows) + 1).logits

    with torch.no_grad():
        step(torch.arange(3), torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]]))
        cache.keep(torch.tensor([3, 2, 1]))
        cache.retire(2, src=torch.tensor([2]), dst=torch.tensor([0]))  # image 0 is done; image 2 moves to row 0
        assert cache.lengths.tolist() == [1, 2] and cache.longest == 2
        later = step(torch.tensor([2, 1]), torch.tensor([[1, 2], [2, 3]]))
        full = model(ids[:, :4]).logits
    torch.testing.assert_close(later[0], full[2, 1:3])
    torch.testing.assert_close(later[1], full[1, 2:4])


def test_compiled_model_samples_as_eager_in_one_graph():
    """`model.compile(dynamic=True)` is the documented speed-up: the static-cache loop and the exact speculative loop
    (whose ragged cache sizes each pass from Python ints, not tensor values) compile without a graph break
    (`fullgraph`) and draw what eager mode draws (greedy, so float rounding cannot flip a draw)."""
    model = make_model(vocab_size=13, image_size=4, parallel_tokens=3)

    def draw(**options):
        return model.generate_images(3, batch_size=3, temperature=0, output_type="tokens", show_progress=False,
                                     **options)

    eager = [draw(tokens_per_step=3, exact=True), draw()]
    model.compile(dynamic=True, fullgraph=True)
    compiled = [draw(tokens_per_step=3, exact=True), draw()]  # exact first: its graph is compiled before any other
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    # Once warm, sampling never compiles again, whatever the draws make of each pass's shape (how many drafts are
    # left, how far each image's cache has grown, how many images are still drawn): a recompilation mid-run costs
    # seconds.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(4):
            for options in ({}, dict(tokens_per_step=3, exact=True)):
                model.generate_images(3, batch_size=3, temperature=1.0, output_type="tokens", show_progress=False,
                                      generator=torch.Generator().manual_seed(seed), **options)
