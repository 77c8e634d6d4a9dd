from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, AutoModelForImageClassification

from pixelgpt import (
    PixelGPTConfig,
    PixelGPTForImageClassification,
    PixelGPTForImageGeneration,
    PixelGPTImageProcessor,
    PixelGPTModel,
)
from pixelgpt.modeling import modeling_pixelgpt
from pixelgpt.modeling.modeling_pixelgpt import ONEDNN, PixelGPTLinear

from conftest import random_ids, tiny_config

CONFIGS = {
    "one_token_per_pixel": dict(),
    "rgb8_subpixels": dict(vocab_size=11, image_size=3, tokens_per_pixel=3),
    "classes_tied": dict(num_classes=3, tie_word_embeddings=True),
}


def make_model(seed=0, cls=PixelGPTForImageGeneration, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).eval()


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_shapes(overrides):
    model = make_model(**overrides)
    config = model.config
    ids = random_ids(config, batch=3)
    out = model(ids, output_hidden_states=True)
    seq = 1 + config.num_image_tokens
    assert out.logits.shape == (3, seq, config.vocab_size)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (3, seq, config.hidden_size) for h in out.hidden_states)
    assert out.past_key_values.get_seq_length() == seq
    base = PixelGPTModel(config)(ids, use_cache=False)
    assert base.last_hidden_state.shape == (3, seq, config.hidden_size) and base.past_key_values is None


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_changing_a_future_token_never_changes_past_logits(overrides):
    model = make_model(**overrides)
    ids = random_ids(model.config)
    t = ids.shape[1] // 2
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % model.config.vocab_size
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_loss_is_shifted_cross_entropy_and_respects_ignore_index():
    model = make_model()
    ids = random_ids(model.config)
    out = model(ids, labels=ids)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 13), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    labels = ids.clone()
    labels[:, 1:5] = -100
    expected = F.cross_entropy(out.logits[:, 4:-1].reshape(-1, 13), ids[:, 5:].reshape(-1))
    torch.testing.assert_close(model(ids, labels=labels).loss, expected)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_incremental_cache_matches_full_forward(overrides):
    model = make_model(**overrides)
    ids = random_ids(model.config)
    full = model(ids).logits
    out = model(ids[:, :4], use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(4, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_the_cache_may_be_passed_under_either_transformers_name():
    """transformers 5.24 renamed `past_key_values` to `cache`; generate() passes whichever the installed version
    uses, and the output carries the cache under that name."""
    model = make_model()
    ids = random_ids(model.config)
    full = model(ids).logits
    first = model(ids[:, :4], use_cache=True)
    cache = getattr(first, modeling_pixelgpt.CACHE_NAME)
    assert cache.get_seq_length() == 4
    rest = model(ids[:, 4:], cache=cache, use_cache=True)
    assert getattr(rest, modeling_pixelgpt.CACHE_NAME) is cache and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, rtol=1e-4, atol=1e-5)
    bare_cache = getattr(model.model(ids[:, :4], use_cache=True), modeling_pixelgpt.CACHE_NAME)
    model.model(ids[:, 4:], cache=bare_cache, use_cache=True)  # the bare model takes it too
    assert bare_cache.get_seq_length() == ids.shape[1]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cached_generation_matches_uncached_under_a_fixed_seed(cache):
    model = make_model(num_classes=2)
    start = torch.tensor([[model.config.class_token_id(1)], [model.config.start_token_id]])
    kwargs = dict(do_sample=True, top_k=0, max_new_tokens=model.config.num_image_tokens, eos_token_id=None,
                  attention_mask=torch.ones_like(start), pad_token_id=None)
    torch.manual_seed(7)
    uncached = model.generate(start, use_cache=False, **kwargs)
    torch.manual_seed(7)
    cached = model.generate(start, cache_implementation=cache, **kwargs)
    assert cached.shape == (2, 1 + model.config.num_image_tokens)
    assert torch.equal(cached, uncached)


def test_eager_and_sdpa_attention_agree():
    model = make_model()
    ids = random_ids(model.config)
    sdpa = model(ids).logits
    model.set_attn_implementation("eager")
    torch.testing.assert_close(model(ids).logits, sdpa, rtol=1e-4, atol=1e-5)


def test_batching_equivalence():
    model = make_model(tokens_per_pixel=3, vocab_size=7, image_size=3)
    ids = random_ids(model.config, batch=3)
    batched = model(ids).logits
    single = torch.cat([model(ids[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model()
    model.train()
    ids = random_ids(model.config)
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.model.gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_save_load_round_trip(tmp_path, overrides):
    model = make_model(**overrides)
    ids = random_ids(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is PixelGPTForImageGeneration
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    else:
        assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()


def test_regression_slice():
    """Pins the numerics of a seeded tiny model: any change to the forward pass (positions, norms, MLP, head)
    moves these values. Recompute only for a deliberate change of the architecture."""
    model = make_model(seed=0)
    ids = random_ids(model.config, batch=1, seed=3)
    logits = model(ids).logits
    expected = torch.tensor([
        [-0.049566, -0.108228, -0.018339, 0.042277],
        [-0.160522, -0.025395, 0.032183, -0.006812],
        [-0.151699, -0.238881, -0.023969, -0.128202],
    ])
    torch.testing.assert_close(logits[0, [0, 7, 25], :4], expected, rtol=1e-4, atol=2e-6)


def test_classifier_loads_the_trunk_of_a_generation_checkpoint(tmp_path):
    generator = make_model()
    generator.save_pretrained(tmp_path)
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, id2label={0: "a", 1: "b", 2: "c"})
    assert type(classifier) is PixelGPTForImageClassification
    for name, param in generator.model.state_dict().items():
        assert torch.equal(classifier.model.state_dict()[name], param), name
    ids = random_ids(generator.config, batch=4)
    out = classifier(ids, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 1])))


# ----------------------------------------------------------------------------------------------- generate_images
@pytest.fixture
def model_and_processor():
    model = make_model(vocab_size=64, image_size=5, num_classes=2)
    return model, PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=5)


def test_generate_images_returns_pil_and_reproduces_with_a_generator(model_and_processor):
    model, processor = model_and_processor
    kwargs = dict(image_processor=processor, show_progress=False)
    images = model.generate_images(3, generator=torch.Generator().manual_seed(0), batch_size=2, **kwargs)
    assert len(images) == 3 and all(isinstance(i, Image.Image) and i.size == (5, 5) and i.mode == "RGB"
                                    for i in images)
    again = model.generate_images(3, generator=torch.Generator().manual_seed(0), batch_size=2, **kwargs)
    other = model.generate_images(3, generator=torch.Generator().manual_seed(1), batch_size=2, **kwargs)
    as_array = lambda imgs: np.stack([np.asarray(i) for i in imgs])  # noqa: E731
    assert np.array_equal(as_array(images), as_array(again))
    assert not np.array_equal(as_array(images), as_array(other))


def test_generate_images_greedy_is_deterministic_and_matches_generate(model_and_processor):
    model, processor = model_and_processor
    tokens = model.generate_images(2, temperature=0, output_type="tokens", show_progress=False)
    start = torch.full((1, 1), model.config.start_token_id)
    reference = model.generate(start, do_sample=False, max_new_tokens=25, eos_token_id=None, pad_token_id=None,
                               attention_mask=torch.ones_like(start))
    assert torch.equal(tokens, reference.repeat(2, 1))


def test_generate_images_class_labels_set_the_start_token(model_and_processor):
    model, processor = model_and_processor
    tokens = model.generate_images(2, class_labels=[1, 0], output_type="tokens", show_progress=False)
    assert tokens[:, 0].tolist() == [model.config.class_token_id(c) for c in (1, 1, 0, 0)]
    assert tokens.shape == (4, 26) and tokens[:, 1:].max() < 64


def test_generate_images_does_not_disturb_the_global_rng(model_and_processor):
    model, processor = model_and_processor
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.generate_images(1, generator=torch.Generator().manual_seed(0), output_type="tokens", show_progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_images=0), "num_images"),
        (dict(batch_size=0), "batch_size"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(class_labels=[5]), "out of range"),
    ],
)
def test_generate_images_rejects_bad_arguments(model_and_processor, kwargs, message):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match=message):
        model.generate_images(image_processor=processor, show_progress=False, **kwargs)


def test_generate_images_checks_the_processor_matches(model_and_processor):
    model, _ = model_and_processor
    with pytest.raises(ValueError, match="does not match the model"):
        model.generate_images(image_processor=PixelGPTImageProcessor(quantization="gray", num_levels=10,
                                                                     image_size=5), show_progress=False)
    with pytest.raises(ValueError, match="No image processor"):
        model.generate_images(show_progress=False)


def test_generate_images_loads_the_processor_saved_beside_the_model(tmp_path, model_and_processor):
    model, processor = model_and_processor
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    images = loaded.generate_images(2, generator=torch.Generator().manual_seed(0), show_progress=False)
    expected = model.generate_images(2, generator=torch.Generator().manual_seed(0), image_processor=processor,
                                     show_progress=False)
    assert [np.asarray(i).tolist() for i in images] == [np.asarray(i).tolist() for i in expected]


# ----------------------------------------------------------------------------------------------- learning
def test_tiny_model_memorises_eight_real_images(default_dataset):
    """8 real Fashion-MNIST images, each with its own class token: the loss must fall to near zero and greedy
    decoding from each class token must redraw its image exactly (an untrained model does neither)."""
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=4, image_size=8, resample="box")
    rows = default_dataset["train"].select(range(8))
    ids = processor([r["image"] for r in rows]).input_ids
    config = PixelGPTConfig(vocab_size=processor.vocab_size, image_size=8, num_classes=8, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=2)
    ids[:, 0] = torch.tensor([config.class_token_id(c) for c in range(8)])
    torch.manual_seed(0)
    model = PixelGPTForImageGeneration(config)
    untrained_loss = model(ids, labels=ids).loss.item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    final_loss = model(ids, labels=ids).loss.item()
    assert untrained_loss > 1.0 and final_loss < 0.02, (untrained_loss, final_loss)
    redrawn = model.generate_images(1, class_labels=list(range(8)), temperature=0, output_type="tokens",
                                    show_progress=False)
    assert torch.equal(redrawn, ids)


# ------------------------------------------------------------------------------------------------ oneDNN matmuls
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="this PyTorch build has no oneDNN")
# `torch.backends.mkldnn.flags` also resets oneDNN's TF32 switch, which warns on builds without Intel GPU support.
quiet_flags = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")


def spy_onednn():
    return mock.patch.object(modeling_pixelgpt, "_onednn_matmul", wraps=modeling_pixelgpt._onednn_matmul)


@needs_onednn
@quiet_flags
def test_linear_runs_through_onednn_and_matches_f_linear_with_gradients():
    torch.manual_seed(0)
    linear = PixelGPTLinear(12, 7)
    x = torch.randn(2, 5, 12, requires_grad=True)
    grad = torch.randn(2, 5, 7)
    with spy_onednn() as spy:
        out = linear(x)
        out.backward(grad)
    assert spy.call_count == 2  # the output and the input gradient
    assert out.shape == (2, 5, 7)
    x_ref, w_ref = x.detach().clone().requires_grad_(), linear.weight.detach().clone().requires_grad_()
    expected = F.linear(x_ref, w_ref)
    expected.backward(grad)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(linear.weight.grad, w_ref.grad)
    with torch.no_grad():  # sampling: the weight packed in oneDNN's layout
        linear.packed = modeling_pixelgpt._pack_weight(linear.weight)
        torch.testing.assert_close(linear(x), expected)
    linear.packed = None
    with spy_onednn() as spy, torch.backends.mkldnn.flags(enabled=False):  # the switch PyTorch offers
        torch.testing.assert_close(linear(x), expected)
    assert spy.call_count == 0
    with spy_onednn() as spy:
        torch.testing.assert_close(linear(x[:1, :1]), expected[:1, :1])  # one row, small weight: MKL's gemv
        big = PixelGPTLinear(512, 256)  # 2**17 weights: oneDNN even for one row
        torch.testing.assert_close(big(x.new_ones(1, 512)), F.linear(x.new_ones(1, 512), big.weight))
        assert spy.call_count == 1
        linear.double()(x.double())  # other dtypes: F.linear
        with pytest.raises(RuntimeError, match="cannot be multiplied"):  # a wrong width: PyTorch's own error
            big(x.new_ones(2, 256))
    assert spy.call_count == 1


@needs_onednn
@quiet_flags
def test_onednn_and_mkl_paths_train_and_sample_alike():
    model = make_model(num_classes=2).train()
    ids = random_ids(model.config, batch=3)
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.backends.mkldnn.flags(enabled=False):
        reference = model(ids, labels=ids).loss
        reference.backward()
    torch.testing.assert_close(loss, reference)
    for grad, param in zip(grads, model.parameters()):
        torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=1e-5)

    model.eval()
    kwargs = dict(num_images=3, batch_size=3, output_type="tokens", show_progress=False, class_labels=[0, 1, 1])
    with spy_onednn() as spy:
        fast = model.generate_images(generator=torch.Generator().manual_seed(1), **kwargs)
    assert spy.call_count > 0 and all(m.packed is None for m in model.modules() if isinstance(m, PixelGPTLinear))
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(fast, model.generate_images(generator=torch.Generator().manual_seed(1), **kwargs))


# ----------------------------------------------------------------------------------------------- fast sampling paths
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
        inputs = model.k_ahead_inputs(torch.cat([ids, torch.zeros_like(ids[:, :1]).expand(-1, n - done)], 1), k)
        inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits[:, done : done + m]
        tokens = torch.cat([tokens, model._draw(logits, 1.0, None, None, as_generate=k == 1)], 1)
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
    drawn = PixelGPTForImageGeneration._draw(logits.expand(4000, 5, 7), 1.0, as_generate=False, **warp)  # (4000, 5)
    assert drawn.shape == (4000, 5)
    frequency = torch.bincount(drawn.flatten(), minlength=7) / drawn.numel()
    assert (frequency[expected == 0] == 0).all()
    torch.testing.assert_close(frequency, expected, atol=0.012, rtol=0)  # 20,000 draws: ~4 standard errors


def test_k_ahead_layout_with_k_1_is_the_raster_model():
    model = make_model()
    ids = random_ids(model.config)
    inputs = model.k_ahead_inputs(ids, 1)
    assert torch.equal(inputs["input_ids"], ids[:, :-1])
    out = model(**inputs)
    torch.testing.assert_close(out.loss, model(ids, labels=ids).loss)
    torch.testing.assert_close(out.logits, model(ids).logits[:, :-1])


def test_k_ahead_rows_never_see_their_target_or_later_tokens():
    model = make_model(parallel_tokens=3)
    ids = random_ids(model.config)
    logits = model(**model.k_ahead_inputs(ids, 3)).logits
    changed = ids.clone()
    changed[:, 1 + 10] = (changed[:, 1 + 10] + 1) % 13  # token 10 is held by row 13, which predicts token 13
    later = model(**model.k_ahead_inputs(changed, 3)).logits
    torch.testing.assert_close(logits[:, :13], later[:, :13], rtol=0, atol=0)
    assert not torch.allclose(logits[:, 13], later[:, 13])


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
        with mock.patch("pixelgpt.modeling.modeling_pixelgpt.tqdm", return_value=mock.MagicMock(update=bar.update)):
            model.generate_images(3, batch_size=2, output_type="tokens", **kwargs)
        assert bar.n == 3 * model.config.num_image_tokens, kwargs


# ----------------------------------------------------------------------------------------------- guidance, completion
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


@pytest.fixture
def gray8_model():
    model = make_model(vocab_size=256, image_size=5, num_classes=2)
    return model, PixelGPTImageProcessor(quantization="gray8", image_size=5)


def test_completion_keeps_the_given_rows_pixel_for_pixel(gray8_model):
    model, processor = gray8_model
    images = [np.random.default_rng(i).integers(0, 256, (5, 5), dtype=np.uint8) for i in range(2)]
    completed = model.complete_images(images, keep_rows=2, num_completions=3, image_processor=processor,
                                      generator=torch.Generator().manual_seed(0), batch_size=4, show_progress=False)
    assert len(completed) == 6 and all(c.size == (5, 5) and c.mode == "L" for c in completed)
    for i, image in enumerate(completed):
        pixels = np.asarray(image)
        assert np.array_equal(pixels[:2], images[i // 3][:2])  # completions of input 0 first, then input 1
    bottoms = [np.asarray(c)[2:] for c in completed[:3]]
    assert not (np.array_equal(bottoms[0], bottoms[1]) and np.array_equal(bottoms[1], bottoms[2]))
    again = model.complete_images(images, keep_rows=2, num_completions=3, image_processor=processor,
                                  generator=torch.Generator().manual_seed(0), batch_size=4, show_progress=False)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(completed, again))


@pytest.mark.parametrize("keep_rows", [0, 3, 5])
def test_completion_fast_path_matches_generate(gray8_model, keep_rows):
    model, processor = gray8_model
    images = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 1), dtype=np.uint8)  # (B, H, W, C)
    kwargs = dict(keep_rows=keep_rows, num_completions=2, class_labels=[1, 0], guidance_scale=1.5,
                  image_processor=processor, output_type="tokens", show_progress=False)
    fast = model.complete_images(images, generator=torch.Generator().manual_seed(3), **kwargs)
    reference = model.complete_images(images, generator=torch.Generator().manual_seed(3), use_generate=True, **kwargs)
    assert torch.equal(fast, reference)
    assert fast[:, 0].tolist() == [model.config.class_token_id(c) for c in (1, 1, 0, 0)]


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
        inputs = model.k_ahead_inputs(ids, 4)
        inputs.pop("labels")
        logits = model(**inputs).logits[:, done : done + m]
        tokens = torch.cat([tokens, model._draw(logits, 1.0, None, None, as_generate=False)], 1)
    assert torch.equal(fast[:, 1:], tokens)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep_rows=6), r"keep_rows` must be an int in \[0, 5\]"),
        (dict(keep_rows=2, num_completions=0), "num_completions"),
        (dict(keep_rows=2, class_labels=[0]), "one class label per input image: 2 images, 1 labels"),
        (dict(keep_rows=2, class_labels=[0, 5]), "out of range"),
    ],
)
def test_completion_rejects_bad_arguments(gray8_model, kwargs, message):
    model, processor = gray8_model
    images = [np.zeros((5, 5), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match=message):
        model.complete_images(images, image_processor=processor, show_progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------- any-order models
def test_any_order_inputs_are_a_shifted_permutation_with_boxes_last():
    model = make_model(task="inpaint", vocab_size=11, image_size=4, tokens_per_pixel=3)
    ids = random_ids(model.config, batch=3)
    inputs = model.any_order_inputs(ids, box_probability=1.0, generator=torch.Generator().manual_seed(0))
    order = inputs["target_positions"]  # (B, N)
    n = model.config.num_image_tokens
    assert order.shape == (3, n) and all(sorted(row.tolist()) == list(range(n)) for row in order)
    assert torch.equal(inputs["labels"], ids[:, 1:].gather(1, order))
    assert torch.equal(inputs["input_ids"][:, 1:], inputs["labels"][:, :-1])
    assert torch.equal(inputs["input_ids"][:, 0], ids[:, 0]) and (inputs["input_positions"][:, 0] == -1).all()
    assert torch.equal(inputs["input_positions"][:, 1:], order[:, :-1])
    assert torch.equal(order % 3, torch.arange(3).repeat(n // 3).expand(3, -1))  # a pixel's R, G, B stay in order
    # The rectangle (drawn with the same generator) is a contiguous block at the end of every order.
    boxes = model.random_boxes(3, 1.0, torch.Generator().manual_seed(0))  # (B, pixels)
    for row, box in zip(order, boxes):
        pixels = row[::3] // 3
        in_box = box[pixels]
        assert in_box.any() and not in_box[: len(pixels) - int(in_box.sum())].any()


def test_any_order_loss_scores_every_token_once():
    model = make_model(task="inpaint")
    ids = random_ids(model.config)
    inputs = model.any_order_inputs(ids, generator=torch.Generator().manual_seed(1))
    out = model(**inputs)
    expected = F.cross_entropy(out.logits.flatten(0, 1), inputs["labels"].flatten())
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (2, model.config.num_image_tokens, model.config.vocab_size)


def reference_fill(model, start_ids, known, order, condition_ids=None):
    """No cache: recompute the whole sequence for every drawn token, in `order`, keeping the known tokens."""
    n = model.config.num_image_tokens
    seq = known.gather(1, order)
    for t in range(n):
        ids = torch.cat([start_ids[:, None], seq[:, :t].clamp(min=0)], 1)
        held = torch.cat([torch.full_like(start_ids[:, None], -1), order[:, :t]], 1)
        logits = model(input_ids=ids, input_positions=held, target_positions=order[:, : t + 1],
                       condition_ids=condition_ids, use_cache=False).logits[:, -1:]
        if (seq[:, t] < 0).any() or t >= model._leading_known(seq):
            drawn = model._draw(logits, 1.0, None, None)[:, 0]
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
    order = model.random_orders(masks, torch.Generator().manual_seed(3))
    start = torch.full((3,), model.config.start_token_id)
    torch.manual_seed(7)
    fast = model.sample_tokens(start, known=known, order=order)
    torch.manual_seed(7)
    assert torch.equal(fast[:, 1:], reference_fill(model, start, known, order))
    assert torch.equal(fast[:, 1:][known >= 0], known[known >= 0])
    assert fast.shape == (3, 1 + n)


def test_any_order_queries_see_context_on_every_side():
    """The first redrawn pixel's prediction depends on a kept pixel that comes after it in raster order."""
    model = make_model(task="inpaint", vocab_size=256)
    known = random_ids(model.config)[:, 1:]
    below = known.clone()
    below[:, -1] = (below[:, -1] + 17) % 256  # change the bottom-right pixel only
    mask = torch.zeros(2, 25, dtype=torch.bool)
    mask[:, 0] = True  # redraw the top-left pixel
    order = model.random_orders(mask, torch.Generator().manual_seed(0))
    assert (order[:, -1] == 0).all()

    def last_logits(tokens):
        seq = tokens.gather(1, order)
        ids = torch.cat([torch.full((2, 1), model.config.start_token_id), seq[:, :-1]], 1)
        held = torch.cat([torch.full((2, 1), -1), order[:, :-1]], 1)
        return model(input_ids=ids, input_positions=held, target_positions=order).logits[:, -1]

    assert not torch.allclose(last_logits(known), last_logits(below))


@pytest.fixture
def inpaint_model():
    model = make_model(task="inpaint", vocab_size=256, image_size=6)
    return model, PixelGPTImageProcessor(quantization="gray8", image_size=6)


def test_inpainting_keeps_unmasked_pixels_and_reproduces(inpaint_model):
    model, processor = inpaint_model
    images = [np.random.default_rng(i).integers(0, 256, (6, 6), dtype=np.uint8) for i in range(2)]
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:4, 2:5] = True
    kwargs = dict(num_samples=2, image_processor=processor, batch_size=3, show_progress=False)
    out = model.inpaint_images(images, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(out) == 4 and all(o.size == (6, 6) and o.mode == "L" for o in out)
    for i, image in enumerate(out):
        assert np.array_equal(np.asarray(image)[~mask], images[i // 2][~mask])  # pixel for pixel
    assert not np.array_equal(np.asarray(out[0])[mask], np.asarray(out[1])[mask])
    again = model.inpaint_images(images, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out, again))


def test_inpainting_masks_at_image_size_follow_the_crop(inpaint_model):
    model, processor = inpaint_model
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 18), dtype=np.uint8))  # 18 wide, 12 high
    mask = Image.new("L", (18, 12), 0)
    mask.paste(255, (3, 0, 9, 12))  # columns 3..8 -> after the crop (columns 3..14 kept, halved): grid columns 0..2
    grid = processor.prepare_mask(mask, image)[0]
    assert grid[:, :3].all() and not grid[:, 3:].any()
    out = model.inpaint_images(image, mask, image_processor=processor, output_type="tokens", show_progress=False,
                               generator=torch.Generator().manual_seed(0))
    kept = processor(image).input_ids[0, 1:].view(6, 6)
    assert torch.equal(out[0, 1:].view(6, 6)[:, 3:], kept[:, 3:])


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((4, 4), dtype=bool), "matches neither the model grid 6x6 nor its image"),
        (np.full((6, 6), 0.5), "masks must be binary"),
        (np.zeros((2, 6, 6, 2)), "expected a 2-D mask"),
        ([np.zeros((6, 6), dtype=bool)] * 3, "one mask for all images or one per image: 2 images, 3 masks"),
    ],
)
def test_inpainting_rejects_bad_masks(inpaint_model, mask, message):
    model, processor = inpaint_model
    images = [np.zeros((6, 6), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match=message):
        model.inpaint_images(images, mask, image_processor=processor, show_progress=False)


def test_transformations_need_a_model_trained_for_them(gray8_model):
    model, processor = gray8_model  # task "generate"
    image = np.zeros((5, 5), dtype=np.uint8)
    for call in (lambda: model.inpaint_images(image, np.ones((5, 5), bool), image_processor=processor),
                 lambda: model.vary_images(image, image_processor=processor),
                 lambda: model.outpaint_images(image, right=2, image_processor=processor)):
        with pytest.raises(ValueError, match=r"needs a model trained for 'inpaint'.*--task inpaint"):
            call()
    for call in (model.colorize_images, model.upscale_images, model.translate_images):
        with pytest.raises(ValueError, match="--task"):
            call(image, image_processor=processor)


def test_variations_keep_exactly_the_unredrawn_share(inpaint_model):
    model, processor = inpaint_model
    image = np.random.default_rng(3).integers(0, 256, (6, 6), dtype=np.uint8)
    same = model.vary_images(image, strength=0.0, image_processor=processor, show_progress=False)[0]
    assert np.array_equal(np.asarray(same), image)
    kwargs = dict(num_variations=3, image_processor=processor, show_progress=False)
    out = model.vary_images(image, strength=0.5, generator=torch.Generator().manual_seed(1), **kwargs)
    # 18 of 36 pixels are redrawn per variation: at least the other 18 are equal, and the kept sets differ.
    kept = [np.asarray(o) == image for o in out]
    assert all(k.sum() >= 18 for k in kept) and not np.array_equal(kept[0], kept[1])
    again = model.vary_images(image, strength=0.5, generator=torch.Generator().manual_seed(1), **kwargs)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out, again))
    with pytest.raises(ValueError, match=r"`strength` must be a number in \[0, 1\]"):
        model.vary_images(image, strength=1.5, image_processor=processor)


def test_outpainting_extends_beyond_the_training_grid(inpaint_model):
    model, processor = inpaint_model
    images = np.random.default_rng(4).integers(0, 256, (2, 6, 6, 1), dtype=np.uint8)
    kwargs = dict(left=2, right=9, top=1, image_processor=processor, show_progress=False, batch_size=2)
    out = model.outpaint_images(images, generator=torch.Generator().manual_seed(0), **kwargs)
    assert [o.size for o in out] == [(17, 7), (17, 7)]
    for o, image in zip(out, images):
        assert np.array_equal(np.asarray(o)[1:7, 2:8], image[..., 0])  # the original, pixel for pixel
    again = model.outpaint_images(images, generator=torch.Generator().manual_seed(0), **kwargs)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out, again))
    tokens = model.outpaint_images(images, output_type="tokens", **dict(kwargs, left=0, right=0, top=0))
    assert torch.equal(tokens, torch.from_numpy(images.reshape(2, -1).astype(np.int64)))  # nothing to add
    with pytest.raises(ValueError, match=r"`right` must be an int in \[0, 24\]"):
        model.outpaint_images(images, right=-1, image_processor=processor)


# ---------------------------------------------------------------------------------------------- conditional models
def make_conditional(task="colorize", condition_size=3, **overrides):
    model = make_model(task=task, vocab_size=64, image_size=6, condition_size=condition_size,
                       condition_vocab_size=256, **overrides)
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=6,
                                       condition_quantization="gray8", condition_size=condition_size)
    return model, processor


def test_condition_rows_come_first_and_predict_nothing():
    model, _ = make_conditional()
    ids = random_ids(model.config)
    condition = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    out = model(ids, condition_ids=condition, labels=ids)
    assert out.logits.shape == (2, 1 + 36, 64)
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)
    hidden = model.model(ids, condition_ids=condition).last_hidden_state
    assert hidden.shape == (2, 9 + 37, model.config.hidden_size)
    other = condition.clone()
    other[:, 4] = (other[:, 4] + 50) % 256  # the centre condition pixel changes every image logit
    assert not torch.allclose(model(ids, condition_ids=other).logits, out.logits)
    with pytest.raises(ValueError, match=r"`condition_ids` must have 9 tokens"):
        model(ids, condition_ids=condition[:, :4])


def test_condition_pixels_sit_on_the_image_pixels_they_cover():
    model, _ = make_conditional(condition_size=3)  # 3x3 over 6x6: condition pixel (i, j) at (2i + 0.5, 2j + 0.5)
    cos, sin = model.model.rotary_emb.condition(3, "cpu", torch.float32)
    assert cos.shape == sin.shape == (1, 1, 9, model.config.head_dim)
    row, col = torch.tensor([[2 * 1 + 0.5]]), torch.tensor([[2 * 2 + 0.5]])
    expected_cos, expected_sin = model.model.rotary_emb._cos_sin(row, col, torch.float32)
    torch.testing.assert_close(cos[0, :, 5], expected_cos[:, 0])  # condition pixel (1, 2) = index 5
    torch.testing.assert_close(sin[0, :, 5], expected_sin[:, 0])


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


def test_colorize_upscale_translate_return_images_and_reproduce():
    model, processor = make_conditional("colorize", condition_size=6)
    images = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    kwargs = dict(num_samples=2, image_processor=processor, show_progress=False)
    out = model.colorize_images(images, keep_luminance=False, generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(out) == 4 and all(o.size == (6, 6) and o.mode == "RGB" for o in out)
    again = model.translate_images(images, generator=torch.Generator().manual_seed(0), **kwargs)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out, again))
    # keep_luminance (default): the model's colours, the input's own gray values.
    kept = model.colorize_images(images, generator=torch.Generator().manual_seed(0), **kwargs)
    for i, image in enumerate(kept):
        gray = np.asarray(Image.fromarray(images[i // 2]).convert("L"), dtype=int)
        error = np.abs(np.asarray(image.convert("L"), dtype=int) - gray)
        # Exact up to YCbCr rounding, except where a (here random, untrained) colour leaves the RGB gamut and clips.
        inside = ((np.asarray(image) > 0) & (np.asarray(image) < 255)).all(-1)
        assert inside.sum() >= 6 and error[inside].max() <= 2
    # A colour image and its grayscale version are the same condition.
    gray = [Image.fromarray(i).convert("L") for i in images]
    assert torch.equal(processor.encode_condition(gray).condition_ids, processor.encode_condition(images).condition_ids)
    with pytest.raises(ValueError, match="needs a model trained for 'upscale'"):
        model.upscale_images(images, image_processor=processor)
    with pytest.raises(ValueError, match=r"use `colorize_images\(images\)`"):
        model.generate_images(image_processor=processor)
    with pytest.raises(ValueError, match="condition_vocab_size"):
        model.colorize_images(images, image_processor=PixelGPTImageProcessor(quantization="rgb", num_levels=4,
                                                                             image_size=6))


def test_conditional_model_and_processor_round_trip(tmp_path):
    model, processor = make_conditional("upscale")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = PixelGPTForImageGeneration.from_pretrained(tmp_path)
    assert (loaded.config.task, loaded.config.condition_size, loaded.config.condition_vocab_size) == ("upscale", 3, 256)
    low = np.random.default_rng(2).integers(0, 256, (3, 3), dtype=np.uint8)
    kwargs = dict(output_type="tokens", show_progress=False)
    a = model.upscale_images(low, image_processor=processor, generator=torch.Generator().manual_seed(5), **kwargs)
    b = loaded.upscale_images(low, generator=torch.Generator().manual_seed(5), **kwargs)  # processor from the folder
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one condition image per image: 1 images, 2 condition images"):
        model.score_images(np.zeros((6, 6), np.uint8), condition_images=[low, low], image_processor=processor)
    with pytest.raises(ValueError, match="for conditional models"):
        make_model().score_images(np.zeros((5, 5), np.uint8), condition_images=low,
                                  image_processor=PixelGPTImageProcessor(quantization="gray", num_levels=13, image_size=5))


def test_score_images_is_the_loss_in_bits_and_masked_scores_see_the_right_context(gray8_model, inpaint_model):
    model, processor = gray8_model
    images = np.random.default_rng(5).integers(0, 256, (3, 5, 5, 1), dtype=np.uint8)
    bits = model.score_images(images, image_processor=processor, batch_size=2)
    ids = processor(images).input_ids
    expected = torch.stack([model(i[None], labels=i[None]).loss for i in ids]) / np.log(2)
    torch.testing.assert_close(bits, expected)
    # Masked scores: a raster model ignores pixels after the masked rows; an inpainting model reads them.
    for (m, p), size in (((model, processor), 5), (inpaint_model, 6)):
        image = np.random.default_rng(6).integers(0, 256, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=bool)
        mask[1:3] = True
        changed = image.copy()
        changed[-1] = 255 - changed[-1]
        seed = dict(image_processor=p)
        a = m.score_images(image, mask, generator=torch.Generator().manual_seed(0), **seed)
        b = m.score_images(changed, mask, generator=torch.Generator().manual_seed(0), **seed)
        assert torch.equal(a, b) == (m.config.task == "generate")


def test_inpainting_models_read_every_kept_pixel_before_drawing(inpaint_model):
    model, processor = inpaint_model
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:5, 1:4] = True
    calls = []
    original = model.sample_tokens

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    with mock.patch.object(model, "sample_tokens", spy):
        model.inpaint_images(np.zeros((6, 6), np.uint8), mask, num_samples=3, image_processor=processor,
                             show_progress=False, generator=torch.Generator().manual_seed(0))
    order, known = calls[0]["order"], calls[0]["known"]
    kept = int((~mask).sum())
    assert order.shape == (3, 36) and (known.gather(1, order)[:, :kept] >= 0).all()  # kept pixels come first
    assert (known.gather(1, order)[:, kept:] < 0).all()
    assert not torch.equal(order[0], order[1])  # each sample draws the hole in its own random order
