"""pixelgpt.tokenizer_training (examples/train_tokenizer.py, `pixelgpt train-tokenizer`) and stage two,
`train.py --tokenizer`: tiny runs on generated colour images (seconds each)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from pixelgpt import PixelGPTVQVAE, tokenizer_training, training

from conftest import REPO_ROOT, assert_honest_card, assert_nearest_enlargement, parse_error

TINY = ["--resolution", "16", "--base_channels", "8", "--fsq_levels", "3", "3", "3", "--train_batch_size", "4",
        "--eval_batch_size", "8", "--lr_warmup_steps", "1", "--max_eval_samples", "8"]
GPT_TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--train_batch_size", "4",
            "--eval_batch_size", "8", "--num_samples", "2", "--lr_warmup_steps", "1", "--max_eval_samples", "8"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


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
    AcceleratorState._reset_state(reset_partial_state=True)
    args = tokenizer_training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / name),
                                          *TINY, *extra])
    tokenizer_training.main(args)
    return tmp_path / name



def test_help_documents_every_argument():
    undocumented = [a.dest for a in tokenizer_training.build_parser()._actions if a.dest != "help" and not a.help]
    assert undocumented == []


@pytest.mark.parametrize("argv, message", [
    (["--resolution", "30"], "--resolution must be in [8, 1024] and a multiple of --downsample_factor (4), got 30"),
    (["--fsq_levels", "1", "4"], "`fsq_levels` must be a non-empty list of ints in [2, 64]"),
    (["--base_channels", "12"], "`base_channels` must be a positive multiple of 8"),
    (["--disc_weight", "nan"], "--disc_weight must be a finite number >= 0"),
    (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
])
def test_impossible_flags_are_refused(argv, message):
    assert message in parse_error(tokenizer_training.parse_args, argv)


def test_a_run_saves_a_loadable_tokenizer_with_figures_grid_and_card(tmp_path, folder):
    out = train_tokenizer(tmp_path, folder, "--max_train_steps", "100", "--learning_rate", "3e-3",
                          "--downsample_factor", "2", "--fsq_levels", "5", "5", "5", "--base_channels", "16",
                          "--train_batch_size", "8", "--disc_weight", "0.05",
                          "--disc_start", "80")
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
    assert "reconstruction PSNR" in card and f"{results['psnr']:.2f} dB" in card and str(tmp_path) not in card
    assert "custom_code" in card and "--tokenizer" in card
    # The card shows the grid enlarged to >= 512 pixels, links nowhere, names no path; its YAML holds every figure.
    assert_honest_card(out, str(tmp_path), str(folder))
    assert "![originals above reconstructions](reconstructions_large.png)" in card
    assert_nearest_enlargement(out / "reconstructions_large.png", out / "reconstructions.png")
    yaml = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert yaml == {name: round(results[name], 4) for name in ("psnr", "bicubic_psnr", "codebook_usage")}


def test_resumed_tokenizer_run_ends_with_the_same_weights(tmp_path, folder):
    common = ["--max_train_steps", "7", "--checkpointing_steps", "3", "--checkpoints_total_limit", "0",
              "--use_ema", "--ema_decay", "0.9", "--disc_weight", "0.1", "--disc_start", "2"]
    straight = train_tokenizer(tmp_path, folder, *common, name="straight")
    save = tokenizer_training.save_checkpoint

    def save_then_crash(accelerator, args, step, ema, settings, data_state):
        save(accelerator, args, step, ema, settings, data_state)
        raise KeyboardInterrupt

    with mock.patch.object(tokenizer_training, "save_checkpoint", save_then_crash), pytest.raises(KeyboardInterrupt):
        train_tokenizer(tmp_path, folder, *common, name="resumed")
    train_tokenizer(tmp_path, folder, *common, "--resume_from_checkpoint", "latest", name="resumed")
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="other settings"):  # the checkpoint belongs to another codebook
        train_tokenizer(tmp_path, folder, *common[:-4], "--fsq_levels", "5", "5", "--resume_from_checkpoint",
                        "latest", name="resumed")


def test_without_data_it_trains_on_the_built_in_images_at_their_own_size(tmp_path):
    AcceleratorState._reset_state(reset_partial_state=True)
    args = tokenizer_training.parse_args(["--output_dir", str(tmp_path / "default"), "--base_channels", "8",
                                          "--max_train_steps", "1", "--max_train_samples", "16",
                                          "--max_eval_samples", "8", "--train_batch_size", "4"])
    assert args.resolution == 28 and tokenizer_training.parse_args(["--train_data_dir", "x"]).resolution == 64
    tokenizer_training.main(args)
    assert AutoModel.from_pretrained(tmp_path / "default").config.grid_size == 7


def test_the_example_script_runs_one_step(tmp_path, folder):
    out = tmp_path / "example"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "train_tokenizer.py"), "--train_data_dir",
                             str(folder), "--output_dir", str(out), *TINY, "--max_train_steps", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "eval_results.json").read_text())["steps"] == 1


def test_stage_two_trains_a_class_conditional_model_that_carries_its_tokenizer(tmp_path, folder):
    tok = train_tokenizer(tmp_path, folder, "--max_train_steps", "2")
    AcceleratorState._reset_state(reset_partial_state=True)
    args = training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "gpt"),
                                "--tokenizer", str(tok), "--class_conditional", "--max_train_steps", "3", *GPT_TINY])
    assert args.resolution is None  # the tokenizer's own, once loaded
    training.main(args)
    model = AutoModel.from_pretrained(tmp_path / "gpt")
    tokenizer = PixelGPTVQVAE.from_pretrained(tok)
    assert model.config.image_size == 4 and model.config.pixel_size == 16 and model.config.vocab_size == 27
    for key, value in tokenizer.state_dict().items():  # carried unchanged by the training
        assert torch.equal(model.image_tokenizer.state_dict()[key], value), key
    results = json.loads((tmp_path / "gpt" / "eval_results.json").read_text())
    assert "bits_per_token" in results and "bits_per_dim" not in results
    images = model.generate_images(1, class_labels=[0, 1], show_progress=False,
                                   generator=torch.Generator().manual_seed(0))
    assert [i.size for i in images] == [(16, 16)] * 2
    card = (tmp_path / "gpt" / "README.md").read_text()
    assert "learned image tokenizer" in card
    # The tokenizer was read from a local folder: its path stays off the files a push would upload.
    assert str(tmp_path) not in (tmp_path / "gpt" / "config.json").read_text() and str(tmp_path) not in card
    # The encoded data is what training reads: the same ids the carried tokenizer gives.
    train, _, _ = training.load_splits(args)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "gpt")
    encoded, bad = training.encode_with_tokenizer(train, tokenizer, processor, args, "train")
    assert bad == []
    first = processor.to_array([Image.open(encoded[0]["image"]["path"])])
    assert encoded[0]["token_ids"] == tokenizer.encode(
        PixelGPTVQVAE.to_pixel_values(torch.from_numpy(first))).flatten().tolist()


def test_stage_two_upscale_reads_pixel_conditions_encoded_once(tmp_path, folder):
    tok = train_tokenizer(tmp_path, folder, "--max_train_steps", "1")
    AcceleratorState._reset_state(reset_partial_state=True)
    args = training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "up"), "--tokenizer",
                                str(tok), "--task", "upscale", "--resolution", "16", "--max_train_steps", "2",
                                *GPT_TINY])
    assert args.condition_size == 4  # a quarter of the pixel side, as without a tokenizer
    assert args.condition_quantization == "rgb"  # colour images: --quantization (default gray) is unused
    training.main(args)
    model = AutoModel.from_pretrained(tmp_path / "up")
    assert model.config.condition_size == 4 and model.config.image_size == 4 and model.config.pixel_size == 16
    low = [Image.open(p).resize((4, 4)) for p in sorted(folder.rglob("*.png"))[:2]]
    out = model.upscale_images(low, show_progress=False, generator=torch.Generator().manual_seed(0))
    assert [i.size for i in out] == [(16, 16)] * 2
    train, _, _ = training.load_splits(args)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "up")
    encoded, _ = training.encode_with_tokenizer(train, model.image_tokenizer, processor, args, "train")
    first = Image.open(encoded[0]["image"]["path"])
    assert encoded[0]["condition_ids"] == processor.encode_condition([first]).condition_ids[0].tolist()


def test_streamed_runs_of_both_stages_encode_images_as_they_are_read(tmp_path, folder):
    tok = train_tokenizer(tmp_path, folder, "--streaming", "--max_train_steps", "2")
    assert (tok / "model.safetensors").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    argv = ["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "up"), "--tokenizer", str(tok), "--task",
            "upscale", "--resolution", "16", "--max_train_steps", "2", *GPT_TINY]
    training.main(training.parse_args([*argv, "--streaming"]))
    model = AutoModel.from_pretrained(tmp_path / "up")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "up")
    # A streamed batch (encoded as it is read) holds the tokens that encoding once, up front, gives.
    prepared = training.parse_args(argv)
    train, _, _ = training.load_splits(prepared)
    encoded, _ = training.encode_with_tokenizer(train.select(range(4)), model.image_tokenizer, processor, prepared,
                                                "train")
    collate = training.make_collate(processor, model.config, prepared, None, model.image_tokenizer)
    streamed, once = collate([{"image": row["image"]} for row in encoded]), collate(list(encoded))
    assert streamed["input_ids"].shape == (4, 1 + 16) and streamed["condition_ids"].shape == (4, 16)
    assert torch.equal(streamed["input_ids"], once["input_ids"])
    assert torch.equal(streamed["condition_ids"], once["condition_ids"])


def test_stage_two_finds_bad_images_when_it_encodes_them(tmp_path, folder):
    tok = train_tokenizer(tmp_path, folder, "--max_train_steps", "1")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "reds" / "broken.png").write_bytes(b"no image here")
    argv = ["--train_data_dir", str(bad), "--tokenizer", str(tok), "--max_train_steps", "1", "--eval_split", "train",
            "--max_eval_samples", "2", *GPT_TINY]
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"Bad train image: \S*broken.png: cannot read image.*--skip_bad_images"):
        training.main(training.parse_args([*argv, "--output_dir", str(tmp_path / "stop")]))
    AcceleratorState._reset_state(reset_partial_state=True)
    training.main(training.parse_args([*argv, "--output_dir", str(tmp_path / "skip"), "--skip_bad_images"]))
    [line] = (tmp_path / "skip" / "skipped_train_images.txt").read_text().splitlines()
    assert "broken.png" in line
    assert json.loads((tmp_path / "skip" / "eval_results.json").read_text())["skipped_train_images"] == 1


def test_stage_two_refuses_what_cannot_work(tmp_path, folder):
    with pytest.raises(SystemExit), mock.patch.object(sys, "stderr") as err:
        training.parse_args(["--tokenizer", "x", "--task", "colorize"])
    assert "--task colorize with --tokenizer needs --resolution" in "".join(c.args[0] for c in
                                                                          err.write.call_args_list)
    AcceleratorState._reset_state(reset_partial_state=True)
    args = training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "gpt"),
                                "--tokenizer", str(tmp_path / "missing"), "--max_train_steps", "1", *GPT_TINY])
    with pytest.raises(ValueError, match="no PixelGPT tokenizer could be loaded from it"):
        training.main(args)
    # A folder of another model (here: a PixelGPT generation model) is refused, not loaded with random weights.
    from pixelgpt import PixelGPTConfig, PixelGPTForImageGeneration

    PixelGPTForImageGeneration(PixelGPTConfig(vocab_size=27, image_size=4, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=1)).save_pretrained(tmp_path / "not-a-tokenizer")
    AcceleratorState._reset_state(reset_partial_state=True)
    args = training.parse_args(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "gpt2"),
                                "--tokenizer", str(tmp_path / "not-a-tokenizer"), "--max_train_steps", "1", *GPT_TINY])
    with pytest.raises(ValueError, match="holds a 'pixelgpt' model, not a PixelGPT image tokenizer"):
        training.main(args)


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path, folder):
    """accelerate launch with 2 processes: the gathered figures and the weights equal a 1-process run's."""
    import os
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = ["--train_data_dir", str(folder), *TINY, "--max_train_steps", "3", "--eval_steps", "100"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(port), str(REPO_ROOT / "examples" / "train_tokenizer.py"), "--output_dir", str(tmp_path / "ddp"),
              *common, "--train_batch_size", "2", "--eval_batch_size", "1"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    AcceleratorState._reset_state(reset_partial_state=True)
    tokenizer_training.main(tokenizer_training.parse_args([*common, "--output_dir", str(tmp_path / "single"),
                                                           "--train_batch_size", "4"]))
    ddp, single = (json.loads((tmp_path / name / "eval_results.json").read_text()) for name in ("ddp", "single"))
    for key in ("psnr", "bicubic_psnr", "codebook_usage"):
        assert abs(ddp[key] - single[key]) < 1e-3, (key, ddp[key], single[key])
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    # Weights only: a conv bias right before a GroupNorm gets a gradient of rounding noise (the norm removes it),
    # which Adam scales to full-size steps of either sign, so those biases differ by ~lr between any two runs.
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a if a[k].ndim > 1)
    assert worst[0] < 1e-4, worst


def test_push_to_hub_uploads_the_tokenizer_folder_with_its_code_and_card(tmp_path, folder):
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def fake_upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        calls.append((repo_id, set(filter_repo_objects(files, ignore_patterns=ignore_patterns)), self.token))

    with mock.patch.object(HfApi, "create_repo", return_value=mock.MagicMock(repo_id="someone/tok")), \
            mock.patch.object(HfApi, "upload_folder", fake_upload_folder):
        out = train_tokenizer(tmp_path, folder, "--max_train_steps", "2", "--checkpointing_steps", "1",
                              "--push_to_hub", "--hub_model_id", "someone/tok", "--hub_token", "hf_secret")
    [(repo_id, uploaded, token)] = calls
    assert repo_id == "someone/tok" and token == "hf_secret"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "reconstructions.png",
            "modeling_pixelgpt_vqvae.py", "configuration_pixelgpt_vqvae.py", "image_processing_pixelgpt.py"} <= uploaded
    assert (out / "checkpoint-2").is_dir() and not [n for n in uploaded if n.startswith(("checkpoint-", "samples/"))]
    assert training.LOCK_NAME not in uploaded and "hf_secret" not in (out / "README.md").read_text()
