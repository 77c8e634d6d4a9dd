import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from pixelgpt import PixelGPTImageProcessor

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (6, 6), dtype=np.uint8)


def encode(processor, image):
    return processor(image).input_ids


def decoded(processor, ids):
    return processor.decode(ids, output_type="np")


# ----------------------------------------------------------------------------------------- lossless modes
RGB_INPUTS = {
    "pil_rgb": lambda: Image.fromarray(RGB),
    "numpy_hwc_uint8": lambda: RGB,
    "numpy_batch": lambda: RGB[None],
    "torch_chw_uint8": lambda: torch.from_numpy(RGB).permute(2, 0, 1),
    "torch_batch_bchw": lambda: torch.from_numpy(RGB).permute(2, 0, 1)[None],
    "numpy_uint16": lambda: RGB.astype(np.uint16) * 257,
    "pil_rgba_opaque": lambda: Image.fromarray(RGB).convert("RGBA"),
    "list_of_one": lambda: [Image.fromarray(RGB)],
}


@pytest.mark.parametrize("make", RGB_INPUTS.values(), ids=RGB_INPUTS.keys())
def test_rgb8_is_lossless_for_every_input_kind(make):
    processor = PixelGPTImageProcessor(quantization="rgb8", image_size=6)
    ids = encode(processor, make())
    assert ids.shape == (1, 1 + 6 * 6 * 3) and ids[0, 0] == 256
    assert ids[0, 1:4].tolist() == RGB[0, 0].tolist()  # sub-pixels in R, G, B order
    assert np.array_equal(decoded(processor, ids)[0], RGB)
    image = processor.decode(ids)[0]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), RGB)


GRAY_INPUTS = {
    "pil_l": lambda: Image.fromarray(GRAY),
    "numpy_hw": lambda: GRAY,
    "numpy_hw1": lambda: GRAY[..., None],
    "torch_1hw": lambda: torch.from_numpy(GRAY)[None],
    "pil_i16": lambda: Image.fromarray(GRAY.astype(np.uint16) * 257),
    "pil_i32": lambda: Image.fromarray(GRAY.astype(np.int32) * 257),
    "pil_float": lambda: Image.fromarray(GRAY.astype(np.float32) / 255),
    "numpy_float": lambda: GRAY.astype(np.float64) / 255,
    "pil_la_opaque": lambda: Image.fromarray(GRAY).convert("LA"),
    "pil_p_gray": lambda: Image.fromarray(GRAY).convert("P"),
}


@pytest.mark.parametrize("make", GRAY_INPUTS.values(), ids=GRAY_INPUTS.keys())
def test_gray8_is_lossless_for_every_input_kind(make):
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=6)
    ids = encode(processor, make())
    assert ids.shape == (1, 37)
    assert np.array_equal(decoded(processor, ids)[0, ..., 0], GRAY)
    assert processor.decode(ids)[0].mode == "L"


def test_modes_needing_conversion_match_pil_conversion():
    rgb_processor = PixelGPTImageProcessor(quantization="rgb8", image_size=6)
    cmyk = Image.fromarray(RGB).convert("CMYK")
    assert np.array_equal(decoded(rgb_processor, encode(rgb_processor, cmyk))[0], np.asarray(cmyk.convert("RGB")))
    palette_image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert np.array_equal(decoded(rgb_processor, encode(rgb_processor, palette_image))[0],
                          np.asarray(palette_image.convert("RGB")))
    gray_processor = PixelGPTImageProcessor(quantization="gray8", image_size=6)
    assert np.array_equal(decoded(gray_processor, encode(gray_processor, Image.fromarray(RGB)))[0, ..., 0],
                          np.asarray(Image.fromarray(RGB).convert("L")))


def test_transparency_is_composited_over_the_background():
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., :3] = RGB
    rgba[:3, :, 3] = 255  # top half opaque, bottom half fully transparent
    processor = PixelGPTImageProcessor(quantization="rgb8", image_size=6, background=(10, 20, 30))
    for image in (rgba, Image.fromarray(rgba, mode="RGBA"), torch.from_numpy(rgba).permute(2, 0, 1)):
        pixels = decoded(processor, encode(processor, image))[0]
        assert np.array_equal(pixels[:3], RGB[:3])
        assert (pixels[3:] == [10, 20, 30]).all()
    palette = Image.fromarray(rgba, mode="RGBA").convert("P")
    palette.info["transparency"] = 0
    assert decoded(processor, encode(processor, palette)).shape == (1, 6, 6, 3)


# ----------------------------------------------------------------------------------------- lossy modes
@pytest.mark.parametrize("quantization, levels", [("rgb", 2), ("rgb", 5), ("gray", 3), ("gray", 256)])
def test_level_quantization_snaps_to_the_nearest_level_and_is_idempotent(quantization, levels):
    processor = PixelGPTImageProcessor(quantization=quantization, num_levels=levels, image_size=6)
    image = RGB if quantization == "rgb" else GRAY
    ids = encode(processor, image)
    assert processor.vocab_size == levels ** (3 if quantization == "rgb" else 1)
    assert 0 <= ids[:, 1:].min() and ids[:, 1:].max() < processor.vocab_size
    pixels = decoded(processor, ids)[0].reshape(image.shape)
    grid = np.arange(levels) * 255 / (levels - 1)  # exact levels: no ties, as 255 is odd
    nearest = np.round(grid[np.abs(image[..., None].astype(float) - grid).argmin(-1)])
    assert np.array_equal(pixels, nearest)
    assert torch.equal(encode(processor, pixels), ids)  # decoding lands exactly on levels
    if levels == 256:
        assert np.array_equal(pixels, image)


def test_palette_fit_is_exact_when_the_images_have_few_colours():
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]], dtype=np.uint8)
    image = colours[RNG.integers(0, 3, (6, 6))]
    processor = PixelGPTImageProcessor(image_size=6).fit_palette([image], num_colors=16)
    assert processor.quantization == "palette" and processor.vocab_size == 3
    assert np.array_equal(decoded(processor, encode(processor, image))[0], image)


def test_palette_fit_on_real_images_beats_a_random_palette_and_is_seeded(default_dataset):
    images = [row["image"] for row in default_dataset["train"].select(range(64))]
    kwargs = dict(image_size=28)
    fitted = PixelGPTImageProcessor(**kwargs).fit_palette(images, num_colors=16, seed=0)
    again = PixelGPTImageProcessor(**kwargs).fit_palette(images, num_colors=16, seed=0)
    assert fitted.palette == again.palette and fitted.vocab_size == 16
    assert len({tuple(c) for c in fitted.palette}) == 16
    random_palette = PixelGPTImageProcessor(quantization="palette", palette=RNG.integers(0, 256, (16, 3)), **kwargs)
    truth = fitted.to_array(images).astype(float)

    def error(processor):
        return np.mean((decoded(processor, encode(processor, images)).astype(float) - truth) ** 2)

    assert error(fitted) < 0.25 * error(random_palette)
    ids = encode(fitted, images)
    assert torch.equal(encode(fitted, decoded(fitted, ids)), ids)  # palette colours map to themselves


# ----------------------------------------------------------------------------------------- resize policy
def test_crop_keeps_the_aspect_ratio_and_stretch_does_not():
    wide = np.zeros((4, 8), dtype=np.uint8)
    wide[:, :2] = 255  # white band on the left quarter
    crop = PixelGPTImageProcessor(quantization="gray8", image_size=4, resample="nearest")
    stretch = PixelGPTImageProcessor(quantization="gray8", image_size=4, resample="nearest", resize_mode="stretch")
    assert decoded(crop, encode(crop, wide))[0, ..., 0].max() == 0  # centre square holds no band
    assert (decoded(stretch, encode(stretch, wide))[0, :, 0, 0] == 255).all()  # band squeezed into column 0
    big = np.kron(GRAY, np.ones((2, 2), dtype=np.uint8))  # 12x12, each pixel doubled
    box = PixelGPTImageProcessor(quantization="gray8", image_size=6, resample="box")
    assert np.array_equal(decoded(box, encode(box, big))[0, ..., 0], GRAY)


# ----------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("quantization", ["rgb8", "gray", "palette"])
def test_save_load_round_trip(tmp_path, quantization):
    kwargs = dict(quantization=quantization, image_size=6, num_levels=7, resize_mode="stretch", resample="lanczos")
    if quantization == "palette":
        kwargs["palette"] = RNG.integers(0, 256, (9, 3))
    processor = PixelGPTImageProcessor(**kwargs)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is PixelGPTImageProcessor
    assert loaded.to_dict() == processor.to_dict()
    assert torch.equal(encode(loaded, RGB), encode(processor, RGB))


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quantization="jpeg"), "quantization"),
        (dict(quantization="rgb", num_levels=17), r"\[2, 16\]"),
        (dict(quantization="gray", num_levels=1), r"\[2, 256\]"),
        (dict(quantization="palette"), "needs a `palette`"),
        (dict(quantization="palette", palette=[[0, 0, 0]]), r"\(K, 3\) with 2 <= K"),
        (dict(quantization="palette", palette=[[0, 0, 0], [0, 0, 300]]), "0..255"),
        (dict(image_size=0), "image_size"),
        (dict(resize_mode="pad"), "resize_mode"),
        (dict(resample="cubic"), "resample"),
        (dict(background=(1, 2)), "background"),
        (dict(condition_size=4), "`condition_size` needs a `condition_quantization`"),
        (dict(condition_quantization="palette", condition_size=4), "condition_quantization"),
        (dict(condition_quantization="gray8", condition_size=0), "image_size"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixelGPTImageProcessor(**kwargs)


def test_bad_inputs_raise_clear_errors():
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=6)
    with pytest.raises(ValueError, match=r"float images must hold values in \[0, 1\]"):
        processor(GRAY.astype(np.float32))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        processor(np.zeros((5, 6, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected a 2-D or 3-D"):
        processor(np.zeros((6,), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty list"):
        processor([])
    with pytest.raises(TypeError, match="got str"):
        processor("cat.png")
    with pytest.raises(ValueError, match="unsupported dtype"):
        processor(np.zeros((6, 6), dtype=np.complex64))


def test_decode_rejects_bad_token_ids():
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=4, image_size=6)
    with pytest.raises(ValueError, match=r"must be in \[0, 4\).*\[0, 9\]"):
        processor.decode(np.arange(36).reshape(1, 36) % 10)
    with pytest.raises(ValueError, match=r"shape \(B, 36\) or \(B, 37\)"):
        processor.decode(np.zeros((1, 30), dtype=int))
    with pytest.raises(ValueError, match="must be integers"):
        processor.decode(np.zeros((1, 36), dtype=float))
    assert processor.decode(np.zeros(36, dtype=int))[0].size == (6, 6)  # one unbatched image is fine


# ----------------------------------------------------------------------------------------- conditions and masks
def test_condition_encoding_is_the_condition_processors_tokens(tmp_path):
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=8, condition_quantization="gray",
                                       condition_num_levels=16, condition_size=4, resize_mode="stretch")
    assert processor.condition_vocab_size == 16
    image = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    ids = processor.encode_condition([image, image]).condition_ids
    low = image.convert("L").resize((4, 4), Image.Resampling.BICUBIC)
    expected = np.round(np.asarray(low, dtype=np.float32) * 15 / 255).astype(np.int64).reshape(1, 16)
    assert ids.shape == (2, 16) and torch.equal(ids, torch.from_numpy(np.repeat(expected, 2, axis=0)))
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode_condition(image).condition_ids, ids[:1])
    with pytest.raises(ValueError, match="no condition settings"):
        PixelGPTImageProcessor().encode_condition(image)


def test_masks_from_pil_arrays_and_tensors_agree():
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=4)
    grid = np.zeros((4, 4), dtype=bool)
    grid[1:3, 2] = True
    image = np.zeros((4, 4), dtype=np.uint8)
    for mask in (grid, grid.astype(np.uint8), grid.astype(np.uint8) * 255, torch.from_numpy(grid),
                 Image.fromarray(grid.astype(np.uint8) * 255),
                 Image.fromarray(grid.astype(np.uint8) * 255).convert("1")):
        assert np.array_equal(processor.prepare_mask(mask, image)[0], grid)
    stacked = processor.prepare_mask(np.stack([grid, ~grid]), [image, image])
    assert np.array_equal(stacked[1], ~grid)


def test_dequantize_takes_a_canvas_size():
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=4)
    tokens = RNG.integers(0, 256, (2, 3 * 7))
    pixels = processor.dequantize(tokens, height=3, width=7)
    assert pixels.shape == (2, 3, 7, 1) and np.array_equal(pixels[..., 0].reshape(2, -1), tokens)


# ------------------------------------------------------------------------------------- bad input (issue 12)
def test_a_32_bit_image_holding_8_bit_values_keeps_its_values():
    values = np.arange(16, dtype=np.int32).reshape(4, 4) * 16  # 0..240
    image = Image.fromarray(values)
    assert image.mode == "I"
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=4)
    np.testing.assert_array_equal(processor.to_array(image)[0, ..., 0], values)
    wide = Image.fromarray((values * 257).astype(np.int32))  # real 16-bit values still read as 16-bit
    np.testing.assert_array_equal(processor.to_array(wide)[0, ..., 0], values)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_pixels_are_refused_not_zeroed(bad):
    image = np.full((4, 4), 0.5, dtype=np.float32)
    image[1, 2] = bad
    with pytest.raises(ValueError, match=r"image 0: float image holds 1 NaN or infinite values"):
        PixelGPTImageProcessor(quantization="gray8", image_size=4)(image)


def test_an_empty_batch_is_named_as_such():
    with pytest.raises(ValueError, match=r"empty batch of images \(shape \(0, 4, 4, 3\)\)"):
        PixelGPTImageProcessor(quantization="rgb8", image_size=4)(np.zeros((0, 4, 4, 3), np.uint8))
