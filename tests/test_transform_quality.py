"""examples/transform_quality.py: one tiny pass per task (real figures from trained models: docs/results/)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelgpt import PixelGPTForImageGeneration, PixelGPTImageProcessor

from conftest import REPO_ROOT, tiny_config

sys.path.insert(0, str(REPO_ROOT / "examples"))
import transform_quality  # noqa: E402


def save(folder, processor, **overrides):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=processor.vocab_size, image_size=8, **overrides)
    PixelGPTForImageGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def run(*argv):
    return transform_quality.main(transform_quality.build_parser().parse_args([*argv, "--num_images", "6"]))


def test_inpaint_reports_likelihood_and_pixel_errors_against_both_baselines(tmp_path):
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=8, image_size=8)
    report = run("inpaint", "--model", save(tmp_path / "inpaint", processor, task="inpaint"),
                 "--raster_model", save(tmp_path / "raster", processor), "--grid", str(tmp_path / "grid.png"),
                 "--num_scored_images", "10")
    assert report["num_images"] == 6 and report["num_scored_images"] == 10
    for kind in ("centre", "random"):
        bits = report[kind]["masked_bits_per_token"]
        # ~log2(8) bits for untrained models over 8 levels
        assert 2.5 < bits["inpainting_model_all_sides"] < 3.5 and 2.5 < bits["raster_model_prefix_only"] < 3.5
        # the paired difference of the means, with a standard error of the same order as the per-image spread
        difference = bits["inpainting_model_all_sides"] - bits["raster_model_prefix_only"]
        assert bits["difference"] == pytest.approx(difference, abs=1e-6)
        assert 0 < bits["difference_standard_error"] < 1
        errors = report[kind]["masked_pixel_error"]
        assert set(errors) == {"inpainting_model_sample", "inpainting_model_mean_of_4", "raster_prefix_only_sample",
                               "mean_fill"}
        assert all(0 <= e["mae"] <= 255 and e["mae"] ** 2 <= e["mse"] + 1e-6 for e in errors.values())
    assert Image.open(tmp_path / "grid.png").size == (3 * (6 * 9 + 1), 3 * (4 * 9 + 1))  # 4 rows of 6, scaled x3


@pytest.mark.parametrize("task", ["upscale", "colorize"])
def test_conditional_tasks_report_psnr_against_the_naive_baseline(tmp_path, task):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    condition = dict(condition_quantization="gray8", condition_size=4 if task == "upscale" else 8)
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=8, **condition)
    model = save(tmp_path / task, processor, task=task, condition_size=condition["condition_size"],
                 condition_vocab_size=256)
    report = run(task, "--model", model, "--train_data_dir", str(folder))
    assert set(report) == {"task", "num_images", "temperature", "psnr_db", "per_image_against_" + (
        "bicubic_upsampling" if task == "upscale" else "grayscale_input")}
    psnr = report["psnr_db"]
    baseline = "bicubic_upsampling" if task == "upscale" else "grayscale_input"
    extra = {"model_sample_without_keep_luminance"} if task == "colorize" else set()
    assert set(psnr) == {"model_sample", "model_sample_mean_over_4_draws", "model_greedy", "model_mean_of_4_samples",
                         baseline,
                         "quantized_original_ceiling"} | extra
    assert all(0 < v < 100 for v in psnr.values())
    if task == "upscale":  # an untrained model is far from the ceiling
        assert psnr["quantized_original_ceiling"] > psnr["model_sample"]


def test_per_image_figures_count_samples_that_beat_the_baseline(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):  # gray images: the gray input is exact (the 100 dB cap), every colour a sample adds loses
        Image.new("RGB", (8, 8), (6 * i,) * 3).save(folder / f"{i}.png")
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=8, condition_quantization="gray8",
                                       condition_size=8)
    model = save(tmp_path / "colorize", processor, task="colorize", condition_size=8, condition_vocab_size=256)
    report = run("colorize", "--model", model, "--train_data_dir", str(folder))
    assert report["psnr_db"]["grayscale_input"] == 100.0
    per_image = report["per_image_against_grayscale_input"]
    assert per_image["share_of_samples_better"] == 0.0
    assert per_image["median_difference_db"] < -50


def make_pairs(root, count, size=8):
    """`count` random colour targets under root/targets/<group>/ and their sources (the same images' red channel
    as gray) under root/sources/<group>/, same relative paths."""
    for i in range(count):
        target = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        for kind, image in (("targets", Image.fromarray(target)), ("sources", Image.fromarray(target[..., 0]))):
            (root / kind / f"g{i % 2}").mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(root / kind / f"g{i % 2}" / f"{i}.png")
    return str(root / "targets"), str(root / "sources")


def test_translate_reports_psnr_against_the_source_and_the_mean_target(tmp_path):
    targets, sources = make_pairs(tmp_path, 40)
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=8, condition_quantization="rgb",
                                       condition_num_levels=4, condition_size=8)
    model = save(tmp_path / "translate", processor, task="translate", condition_size=8, condition_vocab_size=64)
    report = run("translate", "--model", model, "--train_data_dir", targets, "--source_dir", sources)
    psnr = report["psnr_db"]
    assert {"source_input", "mean_training_target", "model_sample", "model_greedy"} <= set(psnr)
    assert 0 < psnr["source_input"] < 100 and 0 < psnr["mean_training_target"] < 100
    assert set(report["per_image_against_source_input"]) == {"share_of_samples_better", "median_difference_db"}
    # Each target meets its own source: a source folder that is the targets themselves scores exactly (100 dB).
    same = run("translate", "--model", model, "--train_data_dir", targets, "--source_dir", targets)
    assert same["psnr_db"]["source_input"] == 100.0


def test_translate_pairs_another_folder_by_relative_path_and_names_a_missing_source(tmp_path):
    targets, sources = make_pairs(tmp_path, 5)
    args = transform_quality.build_parser().parse_args(["translate", "--model", "m", "--eval_data_dir", targets,
                                                        "--source_dir", sources, "--num_images", "4"])
    inputs, images = transform_quality.held_out_pairs(args)
    assert len(inputs) == len(images) == 4
    for source, target in zip(inputs, images):  # each source is its target's red channel
        assert np.array_equal(np.asarray(source)[..., 0], np.asarray(target)[..., 0])
    Path(sources, "g0", "2.png").unlink()
    with pytest.raises(ValueError, match="g0/2.png has no source image of the same relative path"):
        transform_quality.held_out_pairs(args)
    args.source_dir = None
    with pytest.raises(ValueError, match="translate needs --source_dir"):
        transform_quality.held_out_pairs(args)


def test_eval_data_dir_measures_every_image_of_another_folder_in_file_order(tmp_path):
    other = tmp_path / "other_style"
    (other / "nested").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(other / "nested" / f"{i}.png")
    (other / "notes.txt").write_text("not an image")
    args = transform_quality.build_parser().parse_args(["colorize", "--model", "m", "--eval_data_dir", str(other),
                                                        "--num_images", "3"])
    images = transform_quality.held_out_images(args, None)
    assert [image.getpixel((0, 0))[0] for image in images] == [0, 40, 80]  # the first 3 files, sorted
    empty = tmp_path / "empty"
    empty.mkdir()
    args.eval_data_dir = str(empty)
    with pytest.raises(ValueError, match="no image files"):
        transform_quality.held_out_images(args, None)


def test_the_model_must_match_the_task(tmp_path):
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=8, image_size=8)
    with pytest.raises(ValueError, match="trained for task 'generate', not 'inpaint'"):
        run("inpaint", "--model", save(tmp_path / "raster", processor), "--raster_model", "x")
    with pytest.raises(ValueError, match="--num_scored_images must be >= 1 .held-out images to score., got 0"):
        run("inpaint", "--model", str(tmp_path / "raster"), "--raster_model", "x", "--num_scored_images", "0")


def test_update_card_puts_every_figure_in_the_model_card_text_and_yaml(tmp_path):
    from huggingface_hub import ModelCard

    from pixelgpt import cards, training

    from conftest import assert_honest_card, assert_nearest_enlargement

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    processor = PixelGPTImageProcessor(quantization="gray", num_levels=8, image_size=8, condition_size=4,
                                       condition_quantization="gray8")
    model = save(tmp_path / "upscale", processor, task="upscale", condition_size=4, condition_vocab_size=256)
    args = training.parse_args(["--output_dir", model, "--task", "upscale", "--resolution", "8", "--train_data_dir",
                                str(folder)])
    config = PixelGPTForImageGeneration.config_class.from_pretrained(model)
    metrics = {"bits_per_token": 2.9, "untrained_bits_per_token": 3.0, "steps": 2}
    cards.write_model_card(model, args=args, config=config, processor=processor, dataset_name=None, metrics=metrics,
                           bits_name="bits_per_token", num_train_images=38)
    with pytest.raises(ValueError, match="--update_card needs a local model folder with its model card"):
        run("upscale", "--model", str(tmp_path / "no-card"), "--update_card")
    for seed in ("0", "1"):  # measuring again replaces the figures
        report = run("upscale", "--model", model, "--train_data_dir", str(folder), "--update_card", "--seed", seed)
    figures = transform_quality.report_figures(report)
    assert [path[0] for path, _ in figures] == ["psnr_db"] * 6 + ["per_image_against_bicubic_upsampling"] * 2
    saved = json.loads((tmp_path / "upscale" / "upscale_quality.json").read_text())
    assert saved == json.loads(json.dumps(report))
    card = ModelCard.load(tmp_path / "upscale" / "README.md")
    yaml = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert yaml == {"bits_per_token": 2.9, "untrained_bits_per_token": 3.0,
                    **{"upscale_quality_" + "_".join(path): round(value, 4) for path, value in figures}}
    assert {r.dataset_name for r in card.data.eval_results} == {"local image folder"}
    text = assert_honest_card(tmp_path / "upscale", str(tmp_path), str(folder))
    assert text.count("## Task quality: upscale") == 1 and "`upscale_quality.json`" in text
    for path, value in figures:
        assert f"| {': '.join(p.replace('_', ' ') for p in path)} | {value:.4f} |" in text
    assert "![upscale examples](upscale_quality_grid_large.png)" in text
    assert_nearest_enlargement(tmp_path / "upscale" / "upscale_quality_grid_large.png",
                               tmp_path / "upscale" / "upscale_quality_grid.png")
