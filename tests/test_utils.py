"""pixelgpt.utils: the model card (honest links, a visible grid, every measured figure in text and YAML) and the
helpers behind it; fast, no training."""

import importlib.metadata
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import EvalResult, ModelCard
from PIL import Image

from pixelgpt import PixelGPTImageProcessor, training, utils

from conftest import assert_honest_card, assert_nearest_enlargement, tiny_config


def raw_grid(folder, cols=8, rows=2, size=28, mode="L"):
    """A sample grid as training saves it: 16 images of 28x28 are 233x59 pixels."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert(mode)
              for _ in range(cols * rows)]
    utils.make_image_grid(images, cols=cols).save(folder / "samples.png")
    return folder / "samples.png"


def card(folder, *argv, parallel_tokens=1, metrics=None):
    args = training.parse_args(["--output_dir", str(folder), *argv])
    config = tiny_config(vocab_size=8, image_size=28, parallel_tokens=parallel_tokens)
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=8, image_size=28)
    metrics = metrics or {"bits_per_token": 0.68543, "untrained_bits_per_token": 3.0912, "steps": 374,
                          "train_seconds": 673.0}
    utils.write_model_card(folder, args=args, config=config, processor=processor, metrics=metrics,
                           bits_name="bits_per_token", num_train_images=6000,
                           dataset_name="pixelgpt built-in Fashion-MNIST subset")
    return ModelCard.load(folder / "README.md")


def yaml_metrics(model_card) -> dict:
    return {r.metric_type: r.metric_value for r in model_card.data.eval_results}


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


def test_the_card_of_the_default_run_shows_an_enlarged_grid_and_links_nowhere(tmp_path):
    folder = tmp_path / "pixelgpt-fashion"
    folder.mkdir()
    raw = raw_grid(folder)
    assert Image.open(raw).size == (233, 59)  # what the issue saw: too small on a model page
    model_card = card(folder)
    text = assert_honest_card(folder, str(tmp_path))
    assert "![samples](samples_large.png)" in text and "Enlarged 3x with nearest neighbour" in text
    assert assert_nearest_enlargement(folder / "samples_large.png", raw) == 3  # 699 pixels wide
    assert Image.open(raw).size == (233, 59)  # the raw grid keeps its size
    assert "A PixelGPT autoregressive image model" in text and "github" not in text.lower()
    assert 'from_pretrained("pixelgpt-fashion", trust_remote_code=True)  # this folder' in text
    assert yaml_metrics(model_card) == {"bits_per_token": 0.6854, "untrained_bits_per_token": 3.0912}
    assert "| bits_per_token | 0.6854 | 3.0912 |" in text
    assert model_card.data.datasets == ["zalando-datasets/fashion_mnist"]  # a real Hub dataset id


def test_the_card_holds_the_k_ahead_bits_in_text_and_yaml(tmp_path):
    raw_grid(tmp_path, cols=4, rows=1, size=8)
    metrics = {"bits_per_token": 0.742, "untrained_bits_per_token": 3.1, "bits_per_token_8_ahead": 0.8934,
               "steps": 10, "train_seconds": 1.0}
    model_card = card(tmp_path, "--parallel_tokens", "8", parallel_tokens=8, metrics=metrics)
    assert yaml_metrics(model_card) == {"bits_per_token": 0.742, "untrained_bits_per_token": 3.1,
                                        "bits_per_token_8_ahead": 0.8934}
    assert "8-ahead" in model_card.text and "| 0.8934 |" in model_card.text
    names = {r.metric_type: r.metric_name for r in model_card.data.eval_results}
    assert names["bits_per_token_8_ahead"] == "held-out bits per token, 8-ahead prediction"
    assert_nearest_enlargement(tmp_path / "samples_large.png", tmp_path / "samples.png")  # 37 -> 518 pixels


def test_a_resumed_run_without_untrained_bits_and_a_card_without_grid(tmp_path):
    model_card = card(tmp_path, metrics={"bits_per_token": 0.7, "untrained_bits_per_token": None, "steps": 3})
    assert yaml_metrics(model_card) == {"bits_per_token": 0.7}
    assert "n/a (resumed run)" in model_card.text and "![" not in model_card.text
    assert not (tmp_path / "samples_large.png").exists()


def test_links_only_to_a_project_address_set_in_the_package_metadata(tmp_path):
    assert utils.project_url() is None  # setup.cfg sets none: the card names the project without a link
    raw_grid(tmp_path)
    metadata = {"Home-page": "UNKNOWN"}
    with mock.patch.object(importlib.metadata, "metadata", lambda name: _Metadata(metadata, [])):
        assert utils.project_url() is None
    urls = ["Source, https://example.org/pixelgpt"]
    with mock.patch.object(importlib.metadata, "metadata", lambda name: _Metadata({}, urls)):
        assert utils.project_url() == "https://example.org/pixelgpt"
        text = card(tmp_path).text
    assert "A [PixelGPT](https://example.org/pixelgpt) autoregressive image model" in text
    text = card(tmp_path, "--hub_model_id", "someone/pixelgpt-fashion").text
    assert 'from_pretrained("someone/pixelgpt-fashion", trust_remote_code=True)\n' in text


class _Metadata:
    def __init__(self, fields, project_urls):
        self.fields, self.project_urls = fields, project_urls

    def get(self, key):
        return self.fields.get(key)

    def get_all(self, key):
        return self.project_urls if key == "Project-URL" else None


def test_update_model_card_adds_then_replaces_a_measured_section(tmp_path):
    raw_grid(tmp_path)
    card(tmp_path)

    def result(name, value):
        return EvalResult(task_type="image-to-image", dataset_type="imagefolder", dataset_name="local image folder",
                          metric_type=f"upscale_quality_{name}", metric_value=value)

    utils.update_model_card(tmp_path, key="upscale_quality", title="Task quality: upscale",
                            body="| psnr | 15.8 |", eval_results=[result("psnr", 15.8), result("greedy", 12.5)])
    utils.update_model_card(tmp_path, key="upscale_quality", title="Task quality: upscale",
                            body="| psnr | 16.2 |", eval_results=[result("psnr", 16.2)])
    model_card = ModelCard.load(tmp_path / "README.md")
    assert yaml_metrics(model_card) == {"bits_per_token": 0.6854, "untrained_bits_per_token": 3.0912,
                                        "upscale_quality_psnr": 16.2}
    text = model_card.text
    assert text.count("## Task quality: upscale") == 1 and "| psnr | 16.2 |" in text and "15.8" not in text
    assert text.index("## Results") < text.index("## Task quality") < text.index("## Training")
    with pytest.raises(FileNotFoundError, match="README.md not found"):
        utils.update_model_card(tmp_path / "elsewhere", key="k", title="t", body="b", eval_results=[])


def test_an_unreadable_image_without_a_file_name_is_named_by_its_content():
    from pixelgpt.utils import open_image

    def message(data):
        with pytest.raises(ValueError) as info:
            open_image({"bytes": data, "path": None}, "image")
        return str(info.value)

    first, again, other = message(b"not an image"), message(b"not an image"), message(b"not one either")
    assert first == again != other  # the same bytes met in another pass count once; others apart
    assert first.startswith("image without a file name (sha1 ") and "0x" not in first  # no memory address
