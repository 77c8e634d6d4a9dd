"""The sampling engine (sampling_pixelgpt.py): the static-cache loop against generate() and against recomputing
everything, the draw, guidance, progress."""

from unittest import mock

import pytest
import torch

from pixelgpt.modeling.layouts_pixelgpt import k_ahead_inputs, random_orders
from pixelgpt.modeling.sampling_pixelgpt import draw_tokens, leading_known

from conftest import make_conditional, make_model, random_ids


@pytest.mark.parametrize(
    "overrides, sampling",
    [
        (dict(), dict(temperature=1.0)),
        (dict(tokens_per_pixel=3, vocab_size=11, image_size=3), dict(temperature=0.7, top_k=5)),
        (dict(num_classes=2), dict(temperature=1.3, top_p=0.8, class_labels=[1, 0])),
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


@pytest.mark.parametrize("k", [2, 4, 7])
def test_k_ahead_cached_loop_matches_recomputing_everything(k):
    model = make_model(parallel_tokens=k, num_classes=2)
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


def test_guided_static_cache_loop_matches_generate_with_cfg():
    model = make_model(num_classes=3)
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
    with pytest.raises(ValueError, match="needs `class_labels` and a class-conditional model"):
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
def test_conditional_cached_loop_matches_recomputing_everything(task):
    model, _ = make_conditional(task)
    start = torch.full((2,), model.config.start_token_id)
    condition = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    known = torch.full((2, 36), -1)
    order = torch.arange(36).expand(2, 36)
    torch.manual_seed(3)
    fast = model.sample_tokens(start, condition_ids=condition)
    torch.manual_seed(3)
    assert torch.equal(fast[:, 1:], reference_fill(model, start, known, order, condition))
