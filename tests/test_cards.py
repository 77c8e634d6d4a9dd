"""pixelgpt.cards: the model card (honest links, a visible grid, every measured figure in text and YAML) and
`update_model_card`; fast, no training."""

import importlib.metadata
from unittest import mock

import numpy as np
import pytest
from huggingface_hub import EvalResult, ModelCard
from PIL import Image

from pixelgpt import PixelGPTImageProcessor, cards, training
from pixelgpt.utils import make_image_grid

from conftest import assert_honest_card, assert_nearest_enlargement, tiny_config


def raw_grid(folder, cols=8, rows=2, size=28, mode="L"):
    """A sample grid as training saves it: 16 images of 28x28 are 233x59 pixels."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert(mode)
              for _ in range(cols * rows)]
    make_image_grid(images, cols=cols).save(folder / "samples.png")
    return folder / "samples.png"


def card(folder, *argv, parallel_tokens=1, metrics=None):
    args = training.parse_args(["--output_dir", str(folder), *argv])
    config = tiny_config(vocab_size=8, image_size=28, parallel_tokens=parallel_tokens)
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=8, image_size=28)
    metrics = metrics or {"bits_per_token": 0.68543, "untrained_bits_per_token": 3.0912, "steps": 374,
                          "train_seconds": 673.0}
    cards.write_model_card(folder, args=args, config=config, processor=processor, metrics=metrics,
                           bits_name="bits_per_token", num_train_images=6000,
                           dataset_name="pixelgpt built-in Fashion-MNIST subset")
    return ModelCard.load(folder / "README.md")


def yaml_metrics(model_card) -> dict:
    return {r.metric_type: r.metric_value for r in model_card.data.eval_results}


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
    assert cards.project_url() is None  # setup.cfg sets none: the card names the project without a link
    raw_grid(tmp_path)
    metadata = {"Home-page": "UNKNOWN"}
    with mock.patch.object(importlib.metadata, "metadata", lambda name: _Metadata(metadata, [])):
        assert cards.project_url() is None
    urls = ["Source, https://example.org/pixelgpt"]
    with mock.patch.object(importlib.metadata, "metadata", lambda name: _Metadata({}, urls)):
        assert cards.project_url() == "https://example.org/pixelgpt"
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

    cards.update_model_card(tmp_path, key="upscale_quality", title="Task quality: upscale",
                            body="| psnr | 15.8 |", eval_results=[result("psnr", 15.8), result("greedy", 12.5)])
    cards.update_model_card(tmp_path, key="upscale_quality", title="Task quality: upscale",
                            body="| psnr | 16.2 |", eval_results=[result("psnr", 16.2)])
    model_card = ModelCard.load(tmp_path / "README.md")
    assert yaml_metrics(model_card) == {"bits_per_token": 0.6854, "untrained_bits_per_token": 3.0912,
                                        "upscale_quality_psnr": 16.2}
    text = model_card.text
    assert text.count("## Task quality: upscale") == 1 and "| psnr | 16.2 |" in text and "15.8" not in text
    assert text.index("## Results") < text.index("## Task quality") < text.index("## Training")
    with pytest.raises(FileNotFoundError, match="README.md not found"):
        cards.update_model_card(tmp_path / "elsewhere", key="k", title="t", body="b", eval_results=[])


def quality_entry(match, recognised, distance):
    return {"matches_requested_class": match, "recognised_share": recognised, "frechet_distance": distance}


def test_the_sample_quality_section_shows_every_guidance_scale_and_the_real_and_untrained_rows():
    real = dict(quality_entry(0.855, 0.68, None), per_class={"a": 0.9, "b": 0.8})
    report = {"sampling": {"guidance_scale": 3.0}, "classifier_test_accuracy": 0.855, "real_test_images": real,
              "guidance_curve": {"3.0": quality_entry(0.91, 0.805, 1.25), "1.0": quality_entry(0.73, 0.6, 2.5)},
              "untrained_model_samples": quality_entry(0.055, 0.0, 40.0),
              "frechet_distance": {"num_images": 200, "real_training_images": 0.4,
                                   "features": "the project classifier's 128 penultimate features"},
              "nearest_training_image": {"training_images_searched": 6000, "samples": {"median": 0.152},
                                         "held_out_real_images": {"median": 0.139}}}
    body, figures = cards.sample_quality_section(report)
    assert "| samples, guidance 3 | 91.0% | 80.5% | 1.25 |" in body
    assert "| samples, guidance 1 | 73.0% | 60.0% | 2.50 |" in body
    assert "| untrained model | 5.5% | 0.0% | 40.00 |" in body
    assert "| 85.5% | 68.0% | 0.40 |" in body and "(chance: 50%)" in body
    assert "is 0.152, from a held-out\nimage 0.139" in body
    values = {metric: value for metric, _, value in figures}
    assert values["sample_quality_class_match_g3"] == 0.91 and values["sample_quality_frechet_g1"] == 2.5
    assert values["sample_quality_recognised_real"] == 0.68 and values["sample_quality_frechet_real"] == 0.4
    assert all(metric.startswith("sample_quality_") for metric in values)  # replaced together when re-measured
