"""pixelgpt.utils: nearest enlargement, PSNR, naming unreadable images; fast, no training."""

import numpy as np
import pytest
import torch
from PIL import Image

from pixelgpt import utils


@pytest.mark.parametrize("width, factor", [(233, 3), (56, 10), (512, 1), (700, 1), (511, 2)])
def test_enlarge_nearest_uses_the_smallest_whole_factor_to_512_pixels(width, factor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, width, 3), dtype=np.uint8))
    large = utils.enlarge_nearest(image)
    assert large.size == (width * factor, 5 * factor)
    assert np.array_equal(np.asarray(large), np.asarray(image).repeat(factor, 0).repeat(factor, 1))


def test_enlarge_nearest_by_the_longer_side_as_the_demo_shows_outputs():
    tall = Image.fromarray(np.arange(6 * 4, dtype=np.uint8).reshape(6, 4))  # 4 wide, 6 high
    assert utils.enlarge_nearest(tall, 256, longer_side=True).size == (4 * 43, 6 * 43)  # 6 * 43 = 258 >= 256
    assert utils.enlarge_nearest(tall, 256).size == (4 * 64, 6 * 64)  # by the width
    assert utils.enlarge_nearest(tall, 6, longer_side=True).size == (4, 6)


def test_psnr_per_image_for_torch_and_numpy_capped_at_100_db():
    truth = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    other = truth.copy()
    other[1, 0, 0, 0] ^= 1  # one sub-pixel one level off: mse 1/60
    other[2] = 255 - truth[2]
    expected = 10 * np.log10(255.0**2 / ((other.astype(float) - truth) ** 2).reshape(3, -1).mean(1))
    from_numpy, from_torch = utils.psnr(other, truth), utils.psnr(torch.from_numpy(other), torch.from_numpy(truth))
    assert from_numpy.dtype == np.float64 and from_torch.dtype == torch.float32
    assert from_numpy[0] == 100.0 and from_torch[0] == 100.0  # identical images
    np.testing.assert_allclose(from_numpy[1:], expected[1:], rtol=0)
    np.testing.assert_allclose(from_torch.numpy()[1:], expected[1:], rtol=1e-6)
    mean_of_two = (truth.astype(float) + other) / 2  # floats off the 0-255 grid are scored as they are
    assert utils.psnr(mean_of_two, truth)[1] == pytest.approx(10 * np.log10(255.0**2 * 60 * 4))


def test_an_unreadable_image_without_a_file_name_is_named_by_its_content():
    from pixelgpt.utils import open_image

    def message(data):
        with pytest.raises(ValueError) as info:
            open_image({"bytes": data, "path": None}, "image")
        return str(info.value)

    first, again, other = message(b"not an image"), message(b"not an image"), message(b"not one either")
    assert first == again != other  # the same bytes met in another pass count once; others apart
    assert first.startswith("image without a file name (sha1 ") and "0x" not in first  # no memory address
