"""The network (modeling_pixelgpt.py, linear_pixelgpt.py): shapes, causality, caches, save/load, the oneDNN linear
layer, learning."""

import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForImageClassification

from pixelgpt import (
    PixelGPTConfig,
    PixelGPTForImageClassification,
    PixelGPTForImageGeneration,
    PixelGPTImageProcessor,
    PixelGPTModel,
)
from pixelgpt.modeling import linear_pixelgpt, modeling_pixelgpt
from pixelgpt.modeling.layouts_pixelgpt import aligned_condition_weights
from pixelgpt.modeling.linear_pixelgpt import ONEDNN, PixelGPTLinear

from conftest import make_conditional, make_model, random_ids

CONFIGS = {
    "one_token_per_pixel": dict(),
    "rgb8_subpixels": dict(vocab_size=11, image_size=3, tokens_per_pixel=3),
    "classes_tied": dict(num_classes=3, tie_word_embeddings=True),
    "class_every_row": dict(num_classes=3, class_embedding=True),
    "text_prompt": dict(text_vocab_size=17, max_text_length=3),  # called without text_ids: the empty prompt
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_shapes(overrides):
    model = make_model(**overrides)
    config = model.config
    ids = random_ids(config, batch=3)
    out = model(ids, output_hidden_states=True)
    seq, prefix = 1 + config.num_image_tokens, config.num_prefix_tokens  # a text model's prompt rows come first
    assert out.logits.shape == (3, seq, config.vocab_size)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (3, prefix + seq, config.hidden_size) for h in out.hidden_states)
    assert out.past_key_values.get_seq_length() == prefix + seq
    base = PixelGPTModel(config)(ids, use_cache=False)
    assert base.last_hidden_state.shape == (3, prefix + seq, config.hidden_size) and base.past_key_values is None


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
    for t in range(4, ids.shape[1]):  # start_ids: class-embedding models add the class to every row
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True, start_ids=ids[:, 0])
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


needs_onednn = pytest.mark.skipif(not ONEDNN, reason="this PyTorch build has no oneDNN")
# `torch.backends.mkldnn.flags` also resets oneDNN's TF32 switch, which warns on builds without Intel GPU support.
quiet_flags = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")


@pytest.fixture
def onednn_preferred(monkeypatch):
    """The oneDNN path as on a non-Intel CPU, whatever CPU runs the tests."""
    monkeypatch.setattr(linear_pixelgpt, "PREFER_ONEDNN", True)


def spy_onednn():
    return mock.patch.object(linear_pixelgpt, "onednn_matmul", wraps=linear_pixelgpt.onednn_matmul)


@needs_onednn
@quiet_flags
def test_linear_runs_through_onednn_and_matches_f_linear_with_gradients(onednn_preferred):
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
        linear.pack()
        assert linear.packed is not None
        torch.testing.assert_close(linear(x), expected)
    linear.unpack()
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
def test_onednn_and_mkl_paths_train_and_sample_alike(onednn_preferred):
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


def test_intel_cpus_keep_pytorchs_own_matmul(monkeypatch):
    """Where MKL is fast (Intel CPUs: `PREFER_ONEDNN` false), every matmul is `F.linear`'s, in training and in
    sampling, and no weight is packed."""
    monkeypatch.setattr(linear_pixelgpt, "PREFER_ONEDNN", False)
    model = make_model()
    ids = random_ids(model.config, batch=2)
    with spy_onednn() as spy, mock.patch.object(linear_pixelgpt, "pack_weight") as pack:
        model(ids, labels=ids).loss.backward()
        model.generate_images(2, batch_size=2, output_type="tokens", show_progress=False)
    assert spy.call_count == 0 and pack.call_count == 0


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


def test_rotary_tables_are_looked_up_bit_for_bit_and_far_positions_still_computed():
    rotary = make_model(vocab_size=11, image_size=3, tokens_per_pixel=3).model.rotary_emb
    near = torch.randint(-64, 27 + 64, (4, 9))
    far = torch.tensor([[-100, 0, 500]])
    for index in (near, far):
        looked_up, computed = rotary._pixel_cos_sin(index, torch.float32), rotary._compute_cos_sin(index, torch.float32)
        assert all(torch.equal(a, b) for a, b in zip(looked_up, computed))
    assert list(rotary._tables) == [(torch.device("cpu"), torch.float32)]


def test_aligned_condition_is_read_bilinearly_and_is_the_pixel_itself_on_a_same_size_grid():
    targets = torch.arange(36)[None]
    colorize, _ = make_conditional("colorize", condition_size=6, aligned_condition=True)
    index, weight = aligned_condition_weights(colorize.config, targets)  # (1, 36, 4)
    assert torch.equal(index[..., 0], targets) and torch.equal(weight, torch.tensor([1.0, 0, 0, 0]).expand(1, 36, 4))
    rgb8 = make_model(task="translate", vocab_size=256, image_size=3, tokens_per_pixel=3, condition_size=3,
                      condition_vocab_size=256, aligned_condition=True)
    index, weight = aligned_condition_weights(rgb8.config, torch.arange(27)[None])
    assert torch.equal(index[..., 0], torch.arange(27)[None] // 3) and (weight[..., 0] == 1).all()
    upscale, _ = make_conditional("upscale", condition_size=3, aligned_condition=True)  # 3x3 under 6x6
    index, weight = aligned_condition_weights(upscale.config, targets)
    torch.testing.assert_close(weight.sum(-1), torch.ones(1, 36))
    # Bilinear weights reproduce a linear function: the weighted condition-grid coordinates are each pixel
    # centre's, (r + 0.5) / 2 - 0.5, clamped to the grid.
    expected = ((torch.arange(6) + 0.5) / 2 - 0.5).clamp(0, 2)
    torch.testing.assert_close((weight * (index // 3)).sum(-1), expected.repeat_interleave(6)[None])
    torch.testing.assert_close((weight * (index % 3)).sum(-1), expected.repeat(6)[None])
    assert index[0, 0, 0] == 0 and torch.equal(weight[0, 0], torch.tensor([1.0, 0, 0, 0]))  # corner: pixel 0 only


@pytest.mark.parametrize("prefix", [True, False], ids=["with_prefix", "aligned_only"])
def test_aligned_condition_reaches_the_rows_over_its_pixel_and_no_earlier_row(prefix):
    model, _ = make_conditional("upscale", condition_size=3, aligned_condition=True, condition_prefix=prefix)
    ids = random_ids(model.config)
    condition = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    out = model(ids, condition_ids=condition)
    assert out.logits.shape == (2, 37, 64)
    hidden = model.model(ids, condition_ids=condition).last_hidden_state
    assert hidden.shape == (2, 9 * prefix + 37, model.config.hidden_size)
    other = condition.clone()
    other[:, 5] = (other[:, 5] + 50) % 256  # condition pixel (1, 2): first read by image pixel (1, 3) = index 9
    changed = (model(ids, condition_ids=other).logits - out.logits).abs().amax(dim=(0, 2)) > 0  # (37,) per row
    if prefix:  # attention to the prefix reaches every row
        assert changed.all()
    else:  # only the row predicting pixel 9 and the rows after it (their keys include it) can see the change
        assert not changed[:9].any() and changed[9:].all()


@pytest.mark.parametrize("prefix", [True, False], ids=["with_prefix", "aligned_only"])
def test_condition_patches_give_each_token_the_pixels_of_its_cell(prefix):
    # 5x5 tokens over a 15x15 condition: token (i, j) reads the 3x3 block of pixels rows 3i.., columns 3j..
    model = make_model(task="colorize", vocab_size=64, image_size=5, condition_size=15, condition_patch_size=3,
                       condition_vocab_size=256, aligned_condition=True, condition_prefix=prefix)
    inner, config = model.model, model.config
    assert (config.condition_grid_size, config.num_condition_rows, config.num_prefix_tokens) == (5, 25, 25 * prefix)
    ids = random_ids(config)
    condition = torch.randint(0, 256, (2, 225), generator=torch.Generator().manual_seed(0))
    hidden = inner(ids, condition_ids=condition).last_hidden_state
    assert hidden.shape == (2, 25 * prefix + 26, config.hidden_size)
    with torch.no_grad():  # a gate that is not uniform: where a pixel sits in its cell matters
        inner.aligned_patch_gate.normal_(generator=torch.Generator().manual_seed(1))
    cells = inner.condition_cells(inner.embed_aligned, inner.aligned_patch_gate, condition)  # (2, 25, D)
    block = condition.view(2, 15, 15)[:, 3:6, 6:9].reshape(2, 9)  # token (1, 2) = cell 7
    torch.testing.assert_close(cells[:, 7], (inner.embed_aligned(block) * inner.aligned_patch_gate).sum(1))
    out = model(ids, condition_ids=condition).logits
    other = condition.clone().view(2, 15, 15)
    other[:, 4, 7] = (other[:, 4, 7] + 50) % 256  # a pixel inside cell 7 ...
    changed = (model(ids, condition_ids=other.view(2, 225)).logits - out).abs().amax(dim=(0, 2)) > 0  # (26,)
    if prefix:  # ... reaches every row through the prefix
        assert changed.all()
    else:  # ... or only the row predicting token 7 and the rows after it
        assert not changed[:7].any() and changed[7:].all()
    swapped = condition.clone().view(2, 15, 15)
    swapped[:, 3, 6], swapped[:, 5, 8] = condition.view(2, 15, 15)[:, 5, 8], condition.view(2, 15, 15)[:, 3, 6]
    assert not torch.allclose(model(ids, condition_ids=swapped.view(2, 225)).logits, out)
    # cached continuation, the condition passed with every call, equals the full forward
    first = model(ids[:, :4], condition_ids=condition, use_cache=True)
    rest = model(ids[:, 4:], condition_ids=condition, cache=getattr(first, modeling_pixelgpt.CACHE_NAME),
                 use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], 1), out, rtol=1e-4, atol=1e-5)


def test_class_embedding_is_added_to_every_row_and_start_ids_are_passed_explicitly():
    model = make_model(num_classes=3, class_embedding=True)
    ids = random_ids(model.config, start=model.config.class_token_id(1))
    full = model(ids).logits
    other = ids.clone()
    other[:, 0] = model.config.class_token_id(2)
    assert ((model(other).logits - full).abs().amax(dim=(0, 2)) > 0).all()
    # Later calls carry no start token: they pass `start_ids`; nothing is stored on the cache.
    first = model(ids[:, :3], use_cache=True)
    cache = getattr(first, modeling_pixelgpt.CACHE_NAME)
    with pytest.raises(ValueError, match="pass `start_ids`"):
        model(ids[:, 3:4], cache=cache, use_cache=True)
    rest = model(ids[:, 3:], cache=cache, use_cache=True, start_ids=ids[:, 0]).logits
    torch.testing.assert_close(rest, full[:, 3:], rtol=1e-4, atol=1e-5)
    assert not [name for name in vars(cache) if name.startswith("pixelgpt")]
    # explicit start ids win over the first row's token
    torch.testing.assert_close(model(ids, start_ids=ids[:, 0]).logits, full, rtol=0, atol=0)
    assert not torch.allclose(model(ids, start_ids=other[:, 0]).logits, full)
    with pytest.raises(ValueError, match="pass `start_ids`"):
        model(ids[:, 1:])
    # generate() gives every call the start tokens of its sequences (column 0): cached and uncached draw alike.
    start = ids[:, :1]
    kwargs = dict(do_sample=False, max_new_tokens=model.config.num_image_tokens, eos_token_id=None,
                  pad_token_id=None, attention_mask=torch.ones_like(start))
    assert torch.equal(model.generate(start, **kwargs), model.generate(start, use_cache=False, **kwargs))


def test_a_checkpoint_saved_before_the_conditioning_fields_loads_and_behaves_as_before(tmp_path):
    """Models saved before `aligned_condition`, `condition_prefix`, `class_embedding` and `inpaint_fill_order`
    existed have none of them in config.json: they load with the old architecture and the old outputs."""
    model, _ = make_conditional("upscale", condition_size=3)
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    for name in ("aligned_condition", "condition_prefix", "class_embedding", "inpaint_fill_order"):
        saved.pop(name, None)
    config_file.write_text(json.dumps(saved))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert not loaded.config.aligned_condition and loaded.config.condition_prefix
    assert loaded.config.inpaint_fill_order == "random" and loaded.model.embed_aligned is None
    ids = random_ids(model.config)
    condition = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(ids, condition_ids=condition).logits, model(ids, condition_ids=condition).logits,
                               rtol=0, atol=0)


def text_model():
    model = make_model(text_vocab_size=17, max_text_length=4)
    prompts = torch.tensor([[3, 5, 0, 0], [7, 0, 0, 0]])  # two prompts, padded with 0
    return model, prompts


def test_prompt_rows_come_first_predict_nothing_and_reach_every_image_row():
    model, prompts = text_model()
    ids = random_ids(model.config)
    out = model(ids, text_ids=prompts, output_hidden_states=True)
    assert out.logits.shape == (2, ids.shape[1], 13) and out.hidden_states[0].shape[1] == 4 + ids.shape[1]
    other = model(ids, text_ids=prompts.flip(0)).logits
    assert (other - out.logits).abs().amax(-1).min() > 0  # every row of both images reads its prompt
    # No prompt is the empty prompt (all padding): what guidance's unconditional branch reads.
    torch.testing.assert_close(model(ids).logits, model(ids, text_ids=torch.zeros_like(prompts)).logits, rtol=0,
                               atol=0)


def test_prompt_embedding_is_the_mean_of_its_words_and_ignores_padding():
    model, prompts = text_model()
    table = model.model.embed_prompt.weight
    pooled = model.model.prompt_embedding(torch.cat([prompts, torch.zeros(1, 4, dtype=torch.long)]))  # (3, D)
    torch.testing.assert_close(pooled[0], (table[3] + table[5]) / 2)
    torch.testing.assert_close(pooled[1], table[7])
    torch.testing.assert_close(pooled[2], table[0])  # the empty prompt: its padding's embedding


def test_prompted_cache_continuation_matches_the_full_forward():
    model, prompts = text_model()
    ids = random_ids(model.config)
    full = model(ids, text_ids=prompts).logits
    first = model(ids[:, :5], text_ids=prompts, use_cache=True)
    assert first.past_key_values.get_seq_length() == 4 + 5  # the prompt rows are cached once, first
    rest = model(ids[:, 5:], text_ids=prompts, past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, rtol=1e-4, atol=1e-5)


def test_bad_prompt_ids_are_refused():
    model, prompts = text_model()
    ids = random_ids(model.config)
    with pytest.raises(ValueError, match=r"`text_ids` must have shape \(batch, 4\)"):
        model(ids, text_ids=prompts[:, :3])
    with pytest.raises(ValueError, match=r"prompt token ids in \[0, 17\)"):
        model(ids, text_ids=prompts + 20)
    with pytest.raises(ValueError, match="trained without text prompts"):
        make_model()(ids, text_ids=prompts)
