"""The image methods (tasks_pixelgpt.py): generate, complete, inpaint, vary, outpaint, colorize, upscale,
translate and score_images, encode_images and decode_tokens, and sample_tokens, with their argument checks."""

import re
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

from pixelgpt import (
    PixelGPTForImageGeneration,
    PixelGPTImageProcessor,
)
from pixelgpt.modeling import tasks_pixelgpt
from pixelgpt.modeling.configuration_pixelgpt import CONDITIONAL_TASKS, DEFAULT_OPERATION, OPERATIONS, PIXELGPT_TASKS
from pixelgpt.modeling.sampling_pixelgpt import SamplingOptions

from conftest import make_conditional, make_model, make_text_model, tiny_config


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
                                  image_processor=PixelGPTImageProcessor(quantization="gray", num_levels=13,
                                                                         image_size=5))


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
    original = tasks_pixelgpt.sampling_loop

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    with mock.patch.object(tasks_pixelgpt, "sampling_loop", spy):
        model.inpaint_images(np.zeros((6, 6), np.uint8), mask, num_samples=3, image_processor=processor,
                             show_progress=False, generator=torch.Generator().manual_seed(0))
    order, known = calls[0]["order"], calls[0]["known"]
    kept = int((~mask).sum())
    assert order.shape == (3, 36) and (known.gather(1, order)[:, :kept] >= 0).all()  # kept pixels come first
    assert (known.gather(1, order)[:, kept:] < 0).all()
    assert not torch.equal(order[0], order[1])  # each sample draws the hole in its own random order
    hole = torch.from_numpy(mask.flatten()).nonzero()[:, 0]
    model.config.inpaint_fill_order = "raster"  # models trained since the field exists: the hole row by row
    calls.clear()
    with mock.patch.object(tasks_pixelgpt, "sampling_loop", spy):
        model.inpaint_images(np.zeros((6, 6), np.uint8), mask, num_samples=2, image_processor=processor,
                             show_progress=False)
    assert all(torch.equal(row[kept:], hole) for row in calls[0]["order"])


# ------------------------------------------------------------------------------------- which task does what
def task_model(task):
    conditional = task in CONDITIONAL_TASKS
    model = make_model(task=task, vocab_size=256, image_size=4,
                       **(dict(condition_size=2, condition_vocab_size=256) if conditional else {}))
    condition = dict(condition_quantization="gray8", condition_size=2) if conditional else {}
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=4, **condition)
    return model, processor


OPERATION_CALLS = {
    "generate": lambda model, image, **kw: model.generate_images(1, **kw),
    "complete": lambda model, image, **kw: model.complete_images(image, 2, **kw),
    "inpaint": lambda model, image, **kw: model.inpaint_images(image, np.eye(4, dtype=bool), **kw),
    "outpaint": lambda model, image, **kw: model.outpaint_images(image, right=1, **kw),
    "vary": lambda model, image, **kw: model.vary_images(image, **kw),
    "colorize": lambda model, image, **kw: model.colorize_images(image, **kw),
    "upscale": lambda model, image, **kw: model.upscale_images(image, **kw),
    "translate": lambda model, image, **kw: model.translate_images(image, **kw),
}


@pytest.mark.parametrize("task", PIXELGPT_TASKS)
def test_every_method_follows_the_one_operations_table(task):
    """The table in the config decides, for the model methods as for pipeline() and the CLI (which ask
    `config.check_operation`): each method works exactly for the tasks the table lists for it."""
    assert set(OPERATION_CALLS) == set(OPERATIONS)
    model, processor = task_model(task)
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    worked = []
    for operation, call in OPERATION_CALLS.items():
        try:
            out = call(model, image, image_processor=processor, output_type="tokens", show_progress=False,
                       generator=torch.Generator().manual_seed(0))
        except ValueError as err:
            assert task not in OPERATIONS[operation], f"{operation} refused a {task} model: {err}"
            assert re.search(r"needs a model trained for|draws from a condition image", str(err)), err
            with pytest.raises(ValueError, match=f"`{operation}` needs a model trained for"):
                model.config.check_operation(operation)
        else:
            assert out.shape[0] == 1 and (out[:, 1:] >= 0).all()
            worked.append(operation)
    assert tuple(worked) == model.config.operations
    assert DEFAULT_OPERATION[task] in model.config.operations


def test_sampling_options_take_their_own_keywords_and_pass_the_rest_to_generate():
    options = SamplingOptions.from_kwargs(dict(temperature=0.5, batch_size=3, num_beams=1, top_k=4))
    assert (options.temperature, options.batch_size, options.top_k) == (0.5, 3, 4)
    assert options.generate_kwargs == {"num_beams": 1}
    with pytest.raises(ValueError, match=r"\['num_beams'\] are generate\(\) arguments"):
        options.check(tiny_config())
    SamplingOptions.from_kwargs(dict(num_beams=1, use_generate=True)).check(tiny_config())


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("nan")), "`temperature` must be a finite number, got nan"),
    (dict(temperature=float("nan"), use_generate=True), "`temperature` must be a finite number"),
    (dict(guidance_scale=float("nan"), class_labels=1), "`guidance_scale` must be a finite number"),
    (dict(top_p=float("inf")), "`top_p` must be a finite number"),
    (dict(class_labels=1.7), "class labels must be integers, got 1.7"),
    (dict(class_labels=[0, "1"]), "class labels must be integers, got '1'"),
])
def test_non_numbers_and_fractional_labels_are_refused(model_and_processor, kwargs, message):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match=re.escape(message)):
        model.generate_images(1, image_processor=processor, show_progress=False, **kwargs)
    labels = model.generate_images(1, class_labels=np.int64(1), image_processor=processor, output_type="tokens",
                                   show_progress=False)[:, 0]
    assert labels.tolist() == [model.config.class_token_id(1)]


@pytest.mark.parametrize("parallel_tokens, kwargs, message", [
    (1, dict(tokens_per_step=4), r"`tokens_per_step` must be one of \[1\] for this model .*, got 4\."),
    (4, dict(tokens_per_step=3), r"`tokens_per_step` must be one of \[1, 4\] for this model .*, got 3\."),
    (4, dict(tokens_per_step=0), r"`tokens_per_step` must be one of \[1, 4\] .*, got 0\."),
    (1, dict(tokens_per_step=-2), r"`tokens_per_step` must be one of \[1\] .*, got -2\."),
    (1, dict(top_p=0), r"`top_p` must be in \(0, 1\], got 0\."),
    (1, dict(temperature=float("nan")), r"`temperature` must be a finite number, got nan\."),
    (1, dict(top_k=-1), r"`top_k` must be a non-negative int or None, got -1\."),
    (1, dict(start_ids=torch.tensor([13, 5])), r"`start_ids` must be start or class token ids, in \[13, 16\) .*"
                                               r"got \[5\]\."),
    (1, dict(start_ids=torch.tensor([16])), r"in \[13, 16\) .*got \[16\]\."),  # one past the last class token
], ids=["k_on_a_one_token_model", "neither_1_nor_k", "zero_steps", "negative_steps", "top_p_0", "nan_temperature",
        "negative_top_k", "image_token_as_start", "past_the_last_class"])
def test_sample_tokens_checks_its_arguments_as_the_image_methods_do(parallel_tokens, kwargs, message):
    """`model.sample_tokens` (the loop on token ids) refuses what `generate_images` refuses, in one line that
    names what is accepted, instead of sampling from a model that cannot (or looping on 0 tokens per step)."""
    model = make_model(num_classes=2, parallel_tokens=parallel_tokens)
    start_ids = kwargs.pop("start_ids", torch.full((2,), model.config.start_token_id))
    with pytest.raises(ValueError, match=message) as error:
        model.sample_tokens(start_ids, **kwargs)
    assert "\n" not in str(error.value)


def test_sample_tokens_guides_towards_the_class_tokens_among_its_start_ids():
    model = make_model(num_classes=2, parallel_tokens=4)
    guided = model.sample_tokens(torch.tensor([13, 15]), guidance_scale=2.0, tokens_per_step=4)
    assert guided.shape == (2, 26) and guided[:, 0].tolist() == [13, 15]


def test_encode_images_and_decode_tokens_round_trip_through_the_processors_quantization(model_and_processor):
    model, processor = model_and_processor
    images = source_images(3, size=7)
    ids = model.encode_images(images, image_processor=processor)
    assert torch.equal(ids, processor(images).input_ids)  # the start token, then the processor's tokens
    model(ids)  # what the model reads
    quantized = processor.dequantize(processor.quantize(processor.to_array(images)))  # (B, H, W, C)
    for tokens in (ids, ids[:, 1:]):
        decoded = model.decode_tokens(tokens, image_processor=processor)
        assert np.array_equal(np.stack([np.asarray(i) for i in decoded]), quantized)
    sampled = model.generate_images(2, output_type="tokens", image_processor=processor, show_progress=False)
    assert len(model.decode_tokens(sampled, image_processor=processor)) == 2


def test_score_images_refuses_a_mask_that_selects_nothing(gray8_model):
    model, processor = gray8_model
    images = [np.zeros((5, 5), np.uint8)] * 2
    masks = [np.zeros((5, 5), bool), np.zeros((5, 5), bool)]
    masks[0][2, 2] = True
    with pytest.raises(ValueError, match=r"selects no pixel to score in image\(s\) \[1\]"):
        model.score_images(images, mask_image=masks, image_processor=processor)


# ---------------------------------------------------------------------------- models on a tokenizer's grid (issue 15)
def tokenizer_model(task="generate", **overrides):
    """A PixelGPT on a tiny tokenizer's 3x3 grid of 12x12 images (27 codes), with its rgb8 processor."""
    from pixelgpt import PixelGPTVQVAEConfig

    tokenizer = PixelGPTVQVAEConfig(image_size=12, base_channels=8, downsample_factor=4, fsq_levels=[3, 3, 3])
    model = make_model(**{"task": task, "vocab_size": 27, "image_size": 3, "tokenizer_config": tokenizer, **overrides})
    return model, PixelGPTImageProcessor(quantization="rgb8", image_size=12)


def source_images(count=2, size=12):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def test_tokenizer_model_generates_full_resolution_images_through_its_tokenizer():
    model, processor = tokenizer_model(num_classes=2, class_embedding=True)
    kwargs = dict(image_processor=processor, show_progress=False, class_labels=[1, 0])
    images = model.generate_images(2, generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(images) == 4 and all(i.size == (12, 12) and i.mode == "RGB" for i in images)
    tokens = model.generate_images(2, generator=torch.Generator().manual_seed(0), output_type="tokens", **kwargs)
    assert tokens.shape == (4, 1 + 9) and tokens[:, 1:].max() < 27
    assert tokens[:, 0].tolist() == [model.config.class_token_id(c) for c in (1, 1, 0, 0)]
    decoded = model.image_tokenizer.decode(tokens[:, 1:].view(4, 3, 3))  # the PIL images are the tokenizer's decode
    assert np.array_equal(np.stack([np.asarray(i) for i in images]),
                          model.image_tokenizer.to_uint8(decoded).numpy())
    guided = model.generate_images(1, generator=torch.Generator().manual_seed(0), guidance_scale=3.0, **kwargs)
    assert len(guided) == 2


def test_tokenizer_model_edits_keep_every_pixel_outside_the_mask_exactly():
    model, processor = tokenizer_model(task="inpaint")
    images = source_images()
    original = np.stack([np.asarray(i) for i in images])
    mask = np.zeros((12, 12), dtype=bool)
    mask[5:7, 2:9] = True  # touches token rows 1 and columns 0-2: those tokens are redrawn
    kwargs = dict(image_processor=processor, show_progress=False, generator=torch.Generator().manual_seed(0))
    out = model.inpaint_images(images, mask, num_samples=2, **kwargs)
    assert len(out) == 4 and out[0].size == (12, 12)
    for k, image in enumerate(out):
        pixels = np.asarray(image)
        assert np.array_equal(pixels[~mask], original[k // 2][~mask])  # outside: exactly the input
    tokens = model.inpaint_images(images, mask, output_type="tokens", **kwargs)
    known = model.encode_images(images, processor)[:, 1:]
    grid_mask = torch.zeros(3, 3, dtype=torch.bool)
    grid_mask[1, :] = True  # max-pooled pixel mask
    assert torch.equal(tokens[:, 1:][:, ~grid_mask.flatten()], known[:, ~grid_mask.flatten()])

    completed = model.complete_images(images, keep_rows=5, **kwargs)  # row 5 lies inside token row 1
    assert all(np.array_equal(np.asarray(c)[:5], o[:5]) for c, o in zip(completed, original))
    varied = model.vary_images(images, strength=0.5, num_variations=2, **kwargs)
    assert len(varied) == 4 and varied[0].size == (12, 12)
    wider = model.outpaint_images(images, left=5, top=2, bottom=4, **kwargs)  # margins round up to whole tokens
    assert wider[0].size == (12 + 5, 12 + 2 + 4)
    assert np.array_equal(np.asarray(wider[1])[2:14, 5:17], original[1])


def test_tokenizer_model_scores_token_likelihood_with_masks():
    model, processor = tokenizer_model(task="inpaint")
    images = source_images()
    bits = model.score_images(images, image_processor=processor, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (2,) and torch.isfinite(bits).all()
    ids = model.encode_images(images, processor)
    from pixelgpt.modeling.layouts_pixelgpt import task_inputs

    inputs = task_inputs(model.config, ids, generator=torch.Generator().manual_seed(0),
                         scored=torch.ones(2, 9, dtype=torch.bool))
    labels = inputs.pop("labels")
    nll = torch.nn.functional.cross_entropy(model(**inputs).logits.transpose(1, 2), labels, reduction="none")
    torch.testing.assert_close(bits, nll.mean(1) / np.log(2))
    mask = np.zeros((12, 12), dtype=bool)
    mask[:4] = True  # the top token row only
    masked = model.score_images(images, mask_image=mask, image_processor=processor,
                                generator=torch.Generator().manual_seed(0))
    assert masked.shape == (2,) and not torch.allclose(masked, bits)


def test_encode_images_and_decode_tokens_of_a_tokenizer_model_are_the_tokenizers_round_trip():
    model, processor = tokenizer_model()
    images = source_images(3)
    ids = model.encode_images(images, image_processor=processor)
    pixel_values = model.image_tokenizer.to_pixel_values(torch.from_numpy(processor.to_array(images)))
    codes = model.image_tokenizer.encode(pixel_values)  # (B, 3, 3)
    assert ids.shape == (3, 1 + 9) and (ids[:, 0] == model.config.start_token_id).all()
    assert torch.equal(ids[:, 1:], codes.flatten(1))
    reconstruction = model.image_tokenizer.to_uint8(model.image_tokenizer.decode(codes)).numpy()  # (B, 12, 12, 3)
    for tokens in (ids, ids[:, 1:]):
        decoded = model.decode_tokens(tokens, image_processor=processor)
        assert all(i.size == (12, 12) for i in decoded)
        assert np.array_equal(np.stack([np.asarray(i) for i in decoded]), reconstruction)
    with pytest.raises(ValueError, match=r"Expected token ids of shape \(B, 9\) or \(B, 10\)"):
        model.decode_tokens(ids[:, 2:], image_processor=processor)


@pytest.mark.parametrize("task", CONDITIONAL_TASKS)
def test_tokenizer_models_draw_from_pixel_condition_images(task):
    """Conditional tasks on a tokenizer's grid: the condition stays a pixel grid (here 6x6 gray8 for 12x12 images,
    placed on the 3x3 token grid by scaling); the output is decoded through the tokenizer."""
    model, _ = tokenizer_model(task=task, condition_size=6, condition_vocab_size=256, aligned_condition=True)
    processor = PixelGPTImageProcessor(quantization="rgb8", image_size=12, condition_quantization="gray8",
                                       condition_size=6)
    images = source_images()
    method = {"colorize": model.colorize_images, "upscale": model.upscale_images,
              "translate": model.translate_images}[task]
    seeded = lambda: dict(image_processor=processor, show_progress=False,  # noqa: E731
                          generator=torch.Generator().manual_seed(0))
    out = method(images, num_samples=2, **seeded())
    assert len(out) == 4 and all(i.size == (12, 12) and i.mode == "RGB" for i in out)
    assert np.array_equal(np.asarray(method(images, num_samples=2, **seeded())[3]), np.asarray(out[3]))
    tokens = method(images, output_type="tokens", **seeded())
    assert tokens.shape == (2, 1 + 9) and tokens[:, 1:].max() < 27
    condition = processor.encode_condition(images).condition_ids
    other = model.translate_images(images, output_type="tokens", **seeded()) if task == "translate" else None
    assert other is None or torch.equal(other, tokens)
    bits = model.score_images(images, condition_images=images, image_processor=processor)
    assert bits.shape == (2,) and torch.isfinite(bits).all() and condition.shape == (2, 36)


def test_tokenizer_models_refuse_mismatched_processors():
    with pytest.raises(ValueError, match=r"`vocab_size` \(26\) must equal the tokenizer's codebook size \(27\)"):
        tokenizer_model(vocab_size=26)
    model, _ = tokenizer_model()
    with pytest.raises(ValueError, match=r"Image processor does not match the model: \('quantization', 'image_size'"):
        model.generate_images(1, image_processor=PixelGPTImageProcessor(quantization="rgb8", image_size=3))
    with pytest.raises(ValueError, match=r"is \('rgb8', 12, 256, 6\) for the processor and \('rgb8', 12, 0, 0\)"):
        model.generate_images(1, image_processor=PixelGPTImageProcessor(
            quantization="rgb8", image_size=12, condition_quantization="gray8", condition_size=6))


def test_tokenizer_model_pipeline_and_save_load_round_trip(tmp_path):
    from transformers import pipeline

    model, processor = tokenizer_model(task="inpaint")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.image_tokenizer is not None and not any(p.requires_grad for p in loaded.image_tokenizer.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = source_images(1)
    seeded = lambda: dict(show_progress=False, generator=torch.Generator().manual_seed(0))  # noqa: E731
    expected = np.asarray(model.vary_images(images, image_processor=processor, **seeded())[0])
    assert np.array_equal(np.asarray(loaded.vary_images(images, **seeded())[0]), expected)
    edit = pipeline("image-to-image", model=str(tmp_path), trust_remote_code=True)
    out = edit(images[0], generator=torch.Generator().manual_seed(0), show_progress=False)  # no mask: variations
    assert np.array_equal(np.asarray(out[0]), expected)


# ---------------------------------------------------------------------------------------------- text prompts
def guided_greedy_reference(model, prompts, negative, scale):
    """Greedy raster decoding with classifier-free guidance, one full forward pass per token (no cache): the
    prompt's log-probabilities against the negative (or empty) prompt's."""
    config = model.config
    ids = torch.full((len(prompts), 1), config.start_token_id)
    with torch.no_grad():
        for _ in range(config.num_image_tokens):
            cond = model(ids, text_ids=prompts).logits[:, -1].float().log_softmax(-1)
            uncond = model(ids, text_ids=negative).logits[:, -1].float().log_softmax(-1)
            ids = torch.cat([ids, (uncond + scale * (cond - uncond)).argmax(-1, keepdim=True)], 1)
    return ids


def test_prompted_guided_sampling_matches_the_uncached_reference():
    model, processor = make_text_model()
    prompts = ["red square", "blue heart", "green heart"]
    text = torch.from_numpy(processor.encode_prompts(prompts))
    common = dict(temperature=0, guidance_scale=2.5, output_type="tokens", show_progress=False,
                  image_processor=processor)
    tokens = model.generate_images(1, prompt=prompts, **common)
    assert torch.equal(tokens, guided_greedy_reference(model, text, torch.zeros_like(text), 2.5))
    negative = model.generate_images(1, prompt=prompts, negative_prompt="red circle", **common)
    steer = torch.from_numpy(processor.encode_prompts(["red circle"] * 3))
    assert torch.equal(negative, guided_greedy_reference(model, text, steer, 2.5))
    assert not torch.equal(negative, tokens)
    one_by_one = model.generate_images(1, prompt=prompts, batch_size=1, **common)  # batching changes nothing
    assert torch.equal(one_by_one, tokens)


def test_prompts_give_num_images_each_in_order_and_reproduce_with_a_generator():
    model, processor = make_text_model()
    common = dict(output_type="tokens", show_progress=False, image_processor=processor)
    draw = lambda **kw: model.generate_images(3, generator=torch.Generator().manual_seed(1), **common, **kw)  # noqa: E731
    both = draw(prompt=["red square", "blue circle"])
    assert both.shape == (6, 26) and torch.equal(both, draw(prompt=["red square", "blue circle"]))
    greedy = dict(temperature=0, **common)
    red, blue = (model.generate_images(1, prompt=p, **greedy) for p in ("red square", "blue circle"))
    assert not torch.equal(red, blue)
    # The empty prompt is the unconditional model: the same images as no prompt at all.
    assert torch.equal(draw(prompt=""), draw())
    images = model.generate_images(2, prompt="red square", image_processor=processor, show_progress=False)
    assert len(images) == 2 and images[0].size == (5, 5)


def test_edits_take_one_prompt_per_input_image():
    model, processor = make_text_model(task="inpaint")
    images = [np.full((5, 5, 3), 255, np.uint8), np.zeros((5, 5, 3), np.uint8)]
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    common = dict(temperature=0, show_progress=False, image_processor=processor, output_type="tokens")
    red = model.inpaint_images(images, mask, prompt="red square", generator=torch.Generator().manual_seed(0),
                               **common)
    mixed = model.inpaint_images(images, mask, prompt=["red square", "blue heart"],
                                 generator=torch.Generator().manual_seed(0), **common)
    known = model.encode_images(images, processor)
    keep = ~mask.reshape(-1)
    assert torch.equal(red[:, 1:][:, keep], known[:, 1:][:, keep])  # the pixels outside the hole are kept
    assert torch.equal(mixed[0], red[0]) and not torch.equal(mixed[1], red[1])  # each input reads its own prompt
    with pytest.raises(ValueError, match="a string or a list of 2 strings"):
        model.inpaint_images(images, mask, prompt=["red square"], **common)


def test_prompt_misuse_is_refused_in_one_line():
    model, processor = make_text_model()
    common = dict(show_progress=False, image_processor=processor)
    with pytest.raises(ValueError, match="trained without text prompts"):
        make_model(vocab_size=8).generate_images(1, prompt="red square", **common)
    with pytest.raises(ValueError, match="Give `class_labels` or `prompt`, not both"):
        model.generate_images(1, prompt="red square", class_labels=0, **common)
    with pytest.raises(ValueError, match="guides towards a `prompt`: give a `prompt`"):
        model.generate_images(1, guidance_scale=3.0, **common)
    with pytest.raises(ValueError, match="at most 16"):
        model.generate_images(1, prompt="red " * 17, **common)
    for option in (dict(use_generate=True), dict(exact=True)):
        with pytest.raises(ValueError, match="Text models sample with the default loop"):
            model.generate_images(1, prompt="red square", **common, **option)
