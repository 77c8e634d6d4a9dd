"""pixelgpt.training.tokenizer (examples/train_tokenizer.py, `pixelgpt train-tokenizer`) and stage two,
`train.py --tokenizer`, end to end: tiny runs on generated colour images (seconds each). Encoding with a tokenizer
and the collate function are tested on their functions in test_training_data.py, the tokenizer's flags in
test_training_arguments.py, its resume settings in test_training_checkpoints.py."""

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from training_helpers import (
    assert_pushed,
    assert_same_weights,
    crash_after_saving,
    fake_hub,
    fresh_accelerate_state,
    launch_two_cpu_processes,
    reset_accelerate,
    weights,
)
from transformers import AutoImageProcessor, AutoModel

from pixelgpt import PixelGPTVQVAE, training
from pixelgpt.training import loop
from pixelgpt.utils import TrainingError

from conftest import REPO_ROOT, assert_honest_card, assert_nearest_enlargement

TINY = ["--resolution", "16", "--base_channels", "8", "--fsq_levels", "3", "3", "3", "--train_batch_size", "4",
        "--eval_batch_size", "8", "--lr_warmup_steps", "1", "--max_eval_samples", "8"]
GPT_TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--train_batch_size", "4",
            "--eval_batch_size", "8", "--num_samples", "2", "--lr_warmup_steps", "1", "--max_eval_samples", "8",
            "--quality_samples", "8"]

fresh_state = pytest.fixture(autouse=True)(fresh_accelerate_state)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 images in two class folders: flat colours with a square, 20x20 (cropped to 16)."""
    root = tmp_path_factory.mktemp("blocks")
    rng = np.random.default_rng(0)
    for c in ("reds", "blues"):
        (root / c).mkdir()
        for i in range(12):
            image = np.zeros((20, 20, 3), dtype=np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
            y, x = rng.integers(0, 12, 2)
            image[y : y + 8, x : x + 8] = [200, 30, 30] if c == "reds" else [30, 30, 200]
            Image.fromarray(image).save(root / c / f"{i}.png")
    return root


def train_tokenizer(tmp_path, folder, *extra, name="tok"):
    reset_accelerate()
    args = training.parse_tokenizer_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / name),
                                          *TINY, *extra])
    training.tokenizer_main(args)
    return tmp_path / name


def train_stage_two(tmp_path, folder, tokenizer, *extra, name="gpt"):
    reset_accelerate()
    args = training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / name), "--tokenizer",
                                str(tokenizer), *GPT_TINY, *extra])
    training.main(args)
    return tmp_path / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory, folder):
    """100 steps with a patch discriminator from step 80, checkpoints, pushed to a fake Hub."""
    with fake_hub("someone/tok") as (calls, _):
        out = train_tokenizer(tmp_path_factory.mktemp("trained"), folder, "--max_train_steps", "100",
                              "--learning_rate", "3e-3", "--downsample_factor", "2", "--fsq_levels", "5", "5", "5",
                              "--base_channels", "16", "--train_batch_size", "8", "--disc_weight", "0.05",
                              "--disc_start", "80", "--checkpointing_steps", "50", "--push_to_hub", "--hub_model_id",
                              "someone/tok", "--hub_token", "hf_secret")
    return out, calls


def test_a_run_saves_a_loadable_tokenizer_with_figures_grid_and_card(trained, folder):
    out, _ = trained
    results = json.loads((out / "eval_results.json").read_text())
    assert results["steps"] == 100 and results["codebook_size"] == 125 and results["grid_size"] == 8
    tokenizer = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert isinstance(tokenizer, PixelGPTVQVAE)
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    images = [Image.open(p) for p in sorted(folder.rglob("*.png"))]
    pixels = torch.from_numpy(processor.to_array(images))
    ids = tokenizer.encode(PixelGPTVQVAE.to_pixel_values(pixels))
    # The reported usage is the share of codes the held-out images use (here: a subset of these images).
    assert 0 < results["codebook_usage"] <= ids.unique().numel() / 125
    untrained = PixelGPTVQVAE(tokenizer.config).eval()
    error = lambda m: float((m.decode(m.encode(PixelGPTVQVAE.to_pixel_values(pixels))) -  # noqa: E731
                             PixelGPTVQVAE.to_pixel_values(pixels)).pow(2).mean())
    assert error(tokenizer) < 0.5 * error(untrained)
    assert Image.open(out / "reconstructions.png").size[0] > 16
    card = (out / "README.md").read_text()
    assert "reconstruction PSNR" in card and f"{results['psnr']:.2f} dB" in card and str(out.parent) not in card
    assert "custom_code" in card and "--tokenizer" in card
    # The card shows the grid enlarged to >= 512 pixels, links nowhere, names no path; its YAML holds every figure.
    assert_honest_card(out, str(out.parent), str(folder))
    assert "![originals above reconstructions](reconstructions_large.png)" in card
    assert_nearest_enlargement(out / "reconstructions_large.png", out / "reconstructions.png")
    yaml = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert yaml == {name: round(results[name], 4) for name in ("psnr", "bicubic_psnr", "codebook_usage")}


def test_push_to_hub_uploads_the_tokenizer_folder_with_its_code_and_card(trained):
    out, calls = trained
    assert (out / "checkpoint-100").is_dir()
    assert_pushed(out, calls, "someone/tok", "hf_secret", [
        "model.safetensors", "config.json", "preprocessor_config.json", "README.md", "reconstructions.png",
        "modeling_pixelgpt_vqvae.py", "configuration_pixelgpt_vqvae.py", "image_processing_pixelgpt.py"])


def test_resumed_tokenizer_run_ends_with_the_same_weights(tmp_path, folder):
    common = ["--max_train_steps", "7", "--checkpointing_steps", "3", "--checkpoints_total_limit", "0",
              "--use_ema", "--ema_decay", "0.9", "--disc_weight", "0.1", "--disc_start", "2"]
    straight = train_tokenizer(tmp_path, folder, *common, name="straight")
    with mock.patch.object(loop, "save_checkpoint", crash_after_saving(loop.save_checkpoint)), \
            pytest.raises(KeyboardInterrupt):
        train_tokenizer(tmp_path, folder, *common, name="resumed")
    train_tokenizer(tmp_path, folder, *common, "--resume_from_checkpoint", "latest", name="resumed")
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_without_data_it_trains_on_the_built_in_images_at_their_own_size(tmp_path):
    args = training.parse_tokenizer_args(["--output_dir", str(tmp_path / "default"), "--base_channels", "8",
                                          "--max_train_steps", "1", "--max_train_samples", "16",
                                          "--max_eval_samples", "8", "--train_batch_size", "4"])
    assert args.tokenizer.resolution == 28
    training.tokenizer_main(args)
    assert AutoModel.from_pretrained(tmp_path / "default").config.grid_size == 7


# ------------------------------------------------------------------------------------------------------ stage two
@pytest.fixture(scope="module")
def stage_one(tmp_path_factory, folder):
    """A tokenizer trained on a stream (2 steps), for the stage-two runs."""
    tok = train_tokenizer(tmp_path_factory.mktemp("stage_one"), folder, "--streaming", "--max_train_steps", "2")
    assert (tok / "model.safetensors").exists()
    return tok


def test_stage_two_trains_a_class_conditional_model_that_carries_its_tokenizer(tmp_path, folder, stage_one):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "reds" / "broken.png").write_bytes(b"no image here")  # met when the images are encoded, and skipped
    out = train_stage_two(tmp_path, bad, stage_one, "--class_conditional", "--max_train_steps", "3",
                          "--skip_bad_images", "--eval_split", "train", "--max_eval_samples", "2")
    model = AutoModel.from_pretrained(out)
    tokenizer = PixelGPTVQVAE.from_pretrained(stage_one)
    assert model.config.image_size == 4 and model.config.pixel_size == 16 and model.config.vocab_size == 27
    for key, value in tokenizer.state_dict().items():  # carried unchanged by the training
        assert torch.equal(model.image_tokenizer.state_dict()[key], value), key
    results = json.loads((out / "eval_results.json").read_text())
    assert "bits_per_token" in results and "bits_per_dim" not in results
    images = model.generate_images(1, class_labels=[0, 1], show_progress=False,
                                   generator=torch.Generator().manual_seed(0))
    assert [i.size for i in images] == [(16, 16)] * 2
    card = (out / "README.md").read_text()
    assert "learned image tokenizer" in card
    # The tokenizer was read from a local folder: its path stays off the files a push would upload.
    assert str(tmp_path) not in (out / "config.json").read_text() and str(tmp_path) not in card
    # The bad image found while encoding is counted and listed as the loop's own are.
    [line] = (out / "skipped_train_images.txt").read_text().splitlines()
    assert "broken.png" in line and results["skipped_train_images"] == 1


def test_stage_two_on_a_stream_upscales_from_pixel_conditions(tmp_path, folder, stage_one):
    out = train_stage_two(tmp_path, folder, stage_one, "--task", "upscale", "--resolution", "16", "--streaming",
                          "--max_train_steps", "2", name="up")
    model = AutoModel.from_pretrained(out)
    assert model.config.condition_size == 4 and model.config.image_size == 4 and model.config.pixel_size == 16
    low = [Image.open(p).resize((4, 4)) for p in sorted(folder.rglob("*.png"))[:2]]
    upscaled = model.upscale_images(low, show_progress=False, generator=torch.Generator().manual_seed(0))
    assert [i.size for i in upscaled] == [(16, 16)] * 2


def test_stage_two_colorizes_reading_the_full_resolution_gray_cell_under_each_token(tmp_path, folder, stage_one):
    out = train_stage_two(tmp_path, folder, stage_one, "--task", "colorize", "--resolution", "16",
                          "--max_train_steps", "2", name="colour")
    model = AutoModel.from_pretrained(out)
    config = model.config  # 4x4 tokens, each reading the 4x4 gray pixels under it: 16 condition rows, not 256
    assert (config.condition_size, config.condition_patch_size, config.image_size) == (16, 4, 4)
    assert config.num_condition_rows == 16 and config.num_prefix_tokens == 16
    assert "(condition: 16x16 gray8, a 4x4 cell per token)" in (out / "README.md").read_text()
    gray = [Image.open(p).convert("L").resize((16, 16)) for p in sorted(folder.rglob("*.png"))[:2]]
    colour = model.colorize_images(gray, show_progress=False, generator=torch.Generator().manual_seed(0))
    assert [i.size for i in colour] == [(16, 16)] * 2
    # the input's own gray values are kept as the luminance (only where the colour fits the RGB gamut exactly)
    luma = np.asarray(colour[0].convert("L"), dtype=float)
    assert np.abs(luma - np.asarray(gray[0], dtype=float)).mean() < 3


@pytest.mark.slow
def test_the_example_script_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path, folder):
    """accelerate launch of examples/train_tokenizer.py with 2 processes, as a user would run it: the gathered
    figures and the weights equal a 1-process run's."""
    common = ["--train_data_dir", str(folder), *TINY, "--max_train_steps", "3", "--eval_steps", "100"]
    launch_two_cpu_processes(REPO_ROOT / "examples" / "train_tokenizer.py", "--output_dir", tmp_path / "ddp", *common,
                             "--train_batch_size", "2", "--eval_batch_size", "1")
    reset_accelerate()
    training.tokenizer_main(training.parse_tokenizer_args([*common, "--output_dir", str(tmp_path / "single"),
                                                           "--train_batch_size", "4"]))
    ddp, single = (json.loads((tmp_path / name / "eval_results.json").read_text()) for name in ("ddp", "single"))
    assert ddp["steps"] == 3 and isinstance(AutoModel.from_pretrained(tmp_path / "ddp"), PixelGPTVQVAE)
    for key in ("psnr", "bicubic_psnr", "codebook_usage"):
        assert abs(ddp[key] - single[key]) < 1e-3, (key, ddp[key], single[key])
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    # Weights only: a conv bias right before a GroupNorm gets a gradient of rounding noise (the norm removes it),
    # which Adam scales to full-size steps of either sign, so those biases differ by ~lr between any two runs.
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a if a[k].ndim > 1)
    assert worst[0] < 1e-4, worst


def test_weights_too_large_to_reconstruct_are_a_divergence_not_an_index_error(tmp_path, folder):
    # One step at a huge learning rate leaves finite weights whose reconstructions overflow; the held-out
    # evaluation met them as NaN codes and indexed out of bounds.
    with pytest.raises(TrainingError, match=r"Training diverged at step 1: the held-out reconstructions hold NaN"):
        train_tokenizer(tmp_path, folder, "--learning_rate", "1e6", "--max_train_steps", "1")


# ------------------------------------------------------------------------------------------ both stages in one run
BOTH = ["--tokenizer", "train", "--tokenizer_steps", "4", "--base_channels", "8", "--fsq_levels", "3", "3", "3",
        "--resolution", "16", "--class_conditional", "--max_train_steps", "4", "--checkpointing_steps", "2",
        "--checkpoints_total_limit", "5"]


def train_both(tmp_path, folder, *extra, name="both"):
    reset_accelerate()
    training.main(training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / name),
                                       *GPT_TINY, *BOTH, *extra]))
    return tmp_path / name


@pytest.fixture(scope="module")
def both(tmp_path_factory, folder):
    return train_both(tmp_path_factory.mktemp("both"), folder)


def test_one_run_trains_the_tokenizer_then_the_model_that_carries_it(both):
    tokenizer = AutoModel.from_pretrained(both / "tokenizer")
    assert json.loads((both / "tokenizer" / "eval_results.json").read_text())["steps"] == 4
    model = AutoModel.from_pretrained(both)
    assert model.config.tokenizer_config.codebook_size == 27 and model.config.image_size == 4  # 16 / 4
    carried = model.image_tokenizer.state_dict()
    assert all(torch.equal(carried[k], v) for k, v in tokenizer.state_dict().items())
    images = model.generate_images(1, class_labels=[0, 1], generator=torch.Generator().manual_seed(0),
                                   show_progress=False)
    assert [image.size for image in images] == [(16, 16)] * 2
    # One card describes both stages: the tokenizer's held-out figures beside the model's, in text and YAML.
    results = json.loads((both / "eval_results.json").read_text())
    stage_one = json.loads((both / "tokenizer" / "eval_results.json").read_text())
    assert results["tokenizer_psnr"] == stage_one["psnr"] and results["tokenizer_steps"] == 4
    card = ModelCard.load(both / "README.md")
    assert f"| tokenizer (stage one): reconstruction PSNR, dB | {stage_one['psnr']:.2f} |" in card.text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["tokenizer_psnr"] == round(
        stage_one["psnr"], 4)


def test_by_default_a_class_conditional_run_trains_both_stages_for_their_budgets_and_judges_its_samples(
        tmp_path, folder):
    reset_accelerate()
    args = training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "auto"), *GPT_TINY,
                                "--resolution", "16", "--base_channels", "8", "--fsq_levels", "3", "3", "3",
                                "--class_conditional"])
    assert args.trains_tokenizer  # --tokenizer auto: 16x16 images make a 4x4 token grid
    training.main(args)
    train, _, _ = training.load_splits(args.data, seed=0)
    steps_per_pass = len(train) // 4  # batches of 4, the last partial one dropped
    stage_one = json.loads((tmp_path / "auto" / "tokenizer" / "eval_results.json").read_text())
    results = json.loads((tmp_path / "auto" / "eval_results.json").read_text())
    assert (stage_one["steps"], results["steps"]) == (4 * steps_per_pass, 10 * steps_per_pass)  # the default passes
    # The end of the run judged 8 samples at each guidance scale, on the card and in its YAML.
    report = json.loads((tmp_path / "auto" / "sample_quality.json").read_text())
    assert list(report["guidance_curve"]) == ["3.0", "1.0", "2.0", "4.0", "5.0"]
    assert report["frechet_distance"]["num_images"] == 8
    g3 = report["guidance_curve"]["3.0"]["matches_requested_class"]
    assert results["sample_quality_class_match_g3"] == g3
    card = ModelCard.load(tmp_path / "auto" / "README.md")
    assert card.text.index("## Sample quality") < card.text.index("## Training")
    assert f"| samples, guidance 3 | {g3:.1%} |" in card.text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["sample_quality_class_match_g3"] == round(
        g3, 4)
    # One class per row (2 classes, 8 samples each), at guidance 3, the rows named on the card.
    assert Image.open(tmp_path / "auto" / "samples.png").size == (8 * 17 + 1, 2 * 17 + 1)
    assert "one class per row (guidance 3): blues, reds." in card.text


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("where", ["inside stage one", "at the boundary", "inside stage two"])
def test_a_kill_anywhere_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, folder, both, where):
    if where == "at the boundary":  # stage one finished and saved; stage two never started
        crash = mock.patch.object(training.pixelgpt.PixelGPTTrainer, "__init__", side_effect=Interrupted)
    else:
        stage = "tokenizer" if where == "inside stage one" else "both"

        def save_then_crash(accelerator, run, step, *args, original=loop.save_checkpoint):
            path = original(accelerator, run, step, *args)
            if Path(run.output_dir).name == stage:
                raise Interrupted(f"after {path}")
            return path

        crash = mock.patch.object(loop, "save_checkpoint", save_then_crash)
    with crash, pytest.raises(Interrupted):
        train_both(tmp_path, folder)
    saved = tmp_path / "both" / "tokenizer" / "model.safetensors"
    finished = saved.stat().st_mtime_ns if where != "inside stage one" else None
    train_both(tmp_path, folder, "--resume_from_checkpoint", "latest")
    if finished is not None:  # a finished stage one is never trained (nor saved) again
        assert saved.stat().st_mtime_ns == finished
    assert_same_weights(weights(tmp_path / "both" / "tokenizer"), weights(both / "tokenizer"))
    assert_same_weights(weights(tmp_path / "both"), weights(both))
