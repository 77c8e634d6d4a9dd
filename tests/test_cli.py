"""The `pixelgpt` command (pixelgpt/cli.py): every sub-command on tiny saved models."""

import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from pixelgpt import PixelGPTForImageGeneration
from pixelgpt.cli import build_parser, main, run, slug

from conftest import save_model, save_text_model, save_tokenizer

TINY_TRAIN = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--resolution", "8",
              "--max_train_samples", "32", "--max_eval_samples", "16", "--train_batch_size", "8", "--num_samples", "2",
              "--max_train_steps", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (6, 6), dtype=np.uint8)).save(images / f"im{i}.png")
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[2:4] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return dict(root=root, images=images, generate=save_model(root / "generate", num_classes=2),
                inpaint=save_model(root / "inpaint", task="inpaint"),
                upscale=save_model(root / "upscale", task="upscale", condition_size=3, condition_vocab_size=256))


def read(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_every_sub_command_documents_every_flag():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "train-tokenizer", "generate", "complete", "inpaint", "outpaint", "colorize",
                             "upscale", "translate", "vary", "eval", "demo"}
    for name, sub in commands.items():
        undocumented = [a.dest for a in sub._actions if a.dest != "help" and not a.help]
        assert undocumented == [], name


def test_generate_writes_reproducible_pngs(models, tmp_path, capsys):
    args = ["generate", "--model", models["generate"], "--num_images", "2", "--class_label", "1", "--seed", "3"]
    assert main(args + ["--output_dir", str(tmp_path / "a")]) == 0
    main(args + ["--output_dir", str(tmp_path / "b")])
    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    assert list(a) == ["sample-0000.png", "sample-0001.png"] and a["sample-0000.png"].shape == (6, 6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert "wrote 2 image(s)" in capsys.readouterr().out


def test_inpaint_keeps_the_unmasked_rows_and_vary_outpaint_complete_write_files(models, tmp_path):
    out = tmp_path / "inpaint"
    main(["inpaint", "--model", models["inpaint"], "--mask", str(models["root"] / "mask.png"), "--num_samples", "2",
          "--output_dir", str(out), str(models["images"])])
    results = read(out)
    assert list(results) == ["im0-0.png", "im0-1.png", "im1-0.png", "im1-1.png"]
    original = np.asarray(Image.open(models["images"] / "im1.png"))
    assert np.array_equal(results["im1-1.png"][[0, 1, 4, 5]], original[[0, 1, 4, 5]])
    main(["vary", "--model", models["inpaint"], "--strength", "0", "--output_dir", str(tmp_path / "vary"),
          str(models["images"] / "im1.png")])
    assert np.array_equal(read(tmp_path / "vary")["im1-0.png"], original)
    main(["outpaint", "--model", models["inpaint"], "--right", "4", "--output_dir", str(tmp_path / "out"),
          str(models["images"] / "im1.png")])
    assert read(tmp_path / "out")["im1-0.png"].shape == (6, 10)
    main(["complete", "--model", models["generate"], "--keep_rows", "3", "--output_dir", str(tmp_path / "c"),
          str(models["images"] / "im0.png")])
    original = np.asarray(Image.open(models["images"] / "im0.png"))
    assert np.array_equal(read(tmp_path / "c")["im0-0.png"][:3], original[:3])


def test_upscale_and_eval(models, tmp_path, capsys):
    Image.new("L", (3, 3), 90).save(tmp_path / "small.png")
    main(["upscale", "--model", models["upscale"], "--output_dir", str(tmp_path / "up"), str(tmp_path / "small.png")])
    assert read(tmp_path / "up")["small-0.png"].shape == (6, 6)
    capsys.readouterr()
    main(["eval", "--model", models["generate"], str(models["images"])])
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and 7.0 < report["bits_per_token"] < 9.0  # ~log2(256) untrained


def test_errors_are_messages_not_tracebacks(models, tmp_path):
    for argv, message in (
        (["inpaint", "--model", models["generate"], "--mask", str(models["root"] / "mask.png"),
          str(models["images"])], "--task inpaint"),
        (["colorize", "--model", models["inpaint"], str(tmp_path / "missing.png")],
         "neither an image file nor a folder"),
    ):
        assert message in refusal(argv)


def test_train_sub_command_runs_the_training_script(tmp_path):
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        assert main(["train", "--output_dir", str(tmp_path / "run"), *TINY_TRAIN]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_train_tokenizer_sub_command_and_generate_from_a_model_on_its_tokens(tmp_path, models):
    """Both stages from the command line, then `pixelgpt generate` and `eval` on the stage-two model."""
    AcceleratorState._reset_state(reset_partial_state=True)
    folder = models["images"].parent / "folder"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    try:
        assert main(["train-tokenizer", "--train_data_dir", str(folder), "--output_dir", str(tmp_path / "tok"),
                     "--resolution", "8", "--base_channels", "8", "--fsq_levels", "3", "3", "--max_train_steps", "1",
                     "--train_batch_size", "2", "--eval_fraction", "0.25"]) == 0
        AcceleratorState._reset_state(reset_partial_state=True)
        assert main(["train", "--train_data_dir", str(folder), "--tokenizer", str(tmp_path / "tok"), "--output_dir",
                     str(tmp_path / "gpt"), "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads",
                     "2", "--max_train_steps", "1", "--train_batch_size", "2", "--eval_fraction", "0.25",
                     "--num_samples", "2"]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    main(["generate", "--model", str(tmp_path / "gpt"), "--num_images", "2", "--output_dir", str(tmp_path / "out")])
    assert [image.shape for image in read(tmp_path / "out").values()] == [(8, 8, 3)] * 2


# ------------------------------------------------------------------------------------- misuse (issue 12)
def refusal(argv) -> str:
    """The one line `pixelgpt` (its entry point, `cli.run`) exits with when it refuses `argv`, in this process: any
    exception but the refusal propagates and fails the test, as a traceback would show in a terminal."""
    with mock.patch.object(sys, "argv", ["pixelgpt", *argv]), pytest.raises(SystemExit) as exit_info:
        run()
    message = str(exit_info.value.code)
    assert message.startswith("pixelgpt: ") and "\n" not in message, message
    return message


def pixelgpt(*argv):
    """The installed entry point in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-c", "from pixelgpt.cli import run; run()", *argv], capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)


def test_inputs_with_the_same_name_keep_every_output_and_nothing_is_overwritten(models, tmp_path):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder / "sub").mkdir(parents=True)
        image = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / folder / "sub" / "same.png")
    out = tmp_path / "out"
    args = ["vary", "--model", models["inpaint"], "--output_dir", str(out), "--strength", "0.3"]
    assert main([*args, str(tmp_path / "a" / "sub" / "same.png"), str(tmp_path / "b" / "sub" / "same.png")]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["same-0.png", "same_2-0.png"]
    assert main([*args, str(tmp_path / "a")]) == 0  # a folder's images keep their path inside it
    assert (out / "sub" / "same-0.png").is_file()
    before = (out / "same-0.png").read_bytes()
    result = pixelgpt(*args, "--seed", "5", str(tmp_path / "a" / "sub" / "same.png"))
    assert result.returncode != 0 and "already exist; pass --overwrite" in result.stderr, result.stderr
    assert (out / "same-0.png").read_bytes() == before
    assert main([*args, "--seed", "5", "--overwrite", str(tmp_path / "a" / "sub" / "same.png")]) == 0


def test_bad_model_output_device_and_numbers_are_one_line_messages(models, tmp_path):
    image = str(models["images"] / "im0.png")
    (tmp_path / "a_file").write_text("not a folder")
    for argv, message in (
        (["vary", "--model", str(tmp_path / "no-such-model"), image], "no such folder"),
        (["vary", "--model", "./no-such-model", image], "no such folder"),
        (["vary", "--model", str(models["root"] / "mask.png"), image], "is a file; give a model folder"),
        (["generate", "--model", save_tokenizer(tmp_path / "tokenizer"), "--output_dir", str(tmp_path / "t")],
         "holds an image tokenizer, not a PixelGPT model: `pixelgpt train --tokenizer"),
        (["vary", "--model", models["inpaint"], "--output_dir", str(tmp_path / "a_file"), image],
         "--output_dir " + str(tmp_path / "a_file") + " is a file"),
        (["generate", "--model", models["generate"], "--temperature", "nan", "--output_dir", str(tmp_path / "n")],
         "`temperature` must be a finite number"),
        (["generate", "--model", models["generate"], "--device", "cuda", "--output_dir", str(tmp_path / "c")],
         "asks for a GPU, but torch sees none"),
        (["generate", "--model", models["generate"], "--device", "warp9", "--output_dir", str(tmp_path / "w")],
         "is not a torch device"),
        (["train", "--output_dir", str(tmp_path / "t"), "--resume_from_checkpoint", "latest", *TINY_TRAIN],
         "there is no checkpoint in"),
    ):
        if "cuda" in argv and torch.cuda.is_available():
            continue
        AcceleratorState._reset_state(reset_partial_state=True)  # the train case starts accelerate in this process
        assert message in refusal(argv)
    assert not (tmp_path / "n").exists()  # refused before anything was written
    # The same refusal from the installed entry point in a fresh process: one line on stderr, no traceback.
    result = pixelgpt("vary", "--model", str(tmp_path / "no-such-model"), image)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "no such folder" in lines[-1] and lines[-1].startswith("pixelgpt: "), result.stderr[-2000:]


def test_generate_exact_k_ahead_matches_the_model_method(tmp_path):
    folder = save_model(tmp_path / "k2", parallel_tokens=2)
    assert main(["generate", "--model", folder, "--num_images", "3", "--tokens_per_step", "2", "--exact",
                 "--seed", "4", "--output_dir", str(tmp_path / "out")]) == 0
    model = PixelGPTForImageGeneration.from_pretrained(folder)
    expected = model.generate_images(3, tokens_per_step=2, exact=True, generator=torch.Generator().manual_seed(4),
                                     show_progress=False)
    written = read(tmp_path / "out")
    assert [np.array_equal(written[f"sample-{i:04d}.png"], np.asarray(image)) for i, image in enumerate(expected)] \
        == [True] * 3


# ------------------------------------------------------------------------------------- text prompts (issue 31)
@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return save_text_model(tmp_path_factory.mktemp("cli-text") / "model")


def test_prompts_become_file_names():
    assert [slug(p) for p in ("A red square!", "", "  ", "🙂", "Crème brûlée", "x" * 60)] == \
        ["a-red-square", "unconditional", "unconditional", "prompt", "creme-brulee", "x" * 48]
    assert slug("a very long prompt about " + "red squares " * 9) == "a-very-long-prompt-about-red-squares-red-squares"


def test_generate_with_prompts_writes_each_prompts_images_as_the_model_draws_them(text_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--model", text_model, "--prompt", "A teal square!", "--prompt", "blue circle", "--prompt",
                 "Blue circle", "--num_images", "2", "--negative_prompt", "green heart", "--guidance_scale", "3",
                 "--seed", "4", "--output_dir", str(out)]) == 0
    written = read(out)
    names = [f"{name}-{k:04d}.png" for name in ("a-teal-square", "blue-circle", "blue-circle_2") for k in range(2)]
    assert sorted(written) == sorted(names)
    model = PixelGPTForImageGeneration.from_pretrained(text_model)
    expected = model.generate_images(2, prompt=["A teal square!", "blue circle", "Blue circle"],
                                     negative_prompt="green heart", guidance_scale=3, show_progress=False,
                                     generator=torch.Generator().manual_seed(4))
    assert [np.array_equal(written[name], np.asarray(image)) for name, image in zip(names, expected)] == [True] * 6
    note = "pixelgpt: note: the model never saw 'teal' in its captions (in 'A teal square!'); it reads them as word"
    err = capsys.readouterr().err
    assert note in err and "'!'" not in err  # and nothing about '!', which is no word


def test_editing_commands_take_one_prompt_for_every_input(text_model, tmp_path):
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    assert main(["complete", "--model", text_model, "--keep_rows", "2", "--prompt", "red square", "--guidance_scale",
                 "2", "--num_samples", "2", "--seed", "1", "--output_dir", str(out), str(tmp_path / "0.png"),
                 str(tmp_path / "1.png")]) == 0
    written = read(out)
    names = [f"{i}-red-square-{k}.png" for i in range(2) for k in range(2)]
    assert sorted(written) == names
    model = PixelGPTForImageGeneration.from_pretrained(text_model)
    expected = model.complete_images([Image.open(tmp_path / f"{i}.png") for i in range(2)], 2, num_completions=2,
                                     prompt="red square", guidance_scale=2, show_progress=False,
                                     generator=torch.Generator().manual_seed(1))
    assert [np.array_equal(written[name], np.asarray(image)) for name, image in zip(names, expected)] == [True] * 4


def test_prompt_misuse_is_one_line(models, text_model, tmp_path):
    image = str(models["images"] / "im0.png")
    for argv, message in (
        (["generate", "--model", models["generate"], "--prompt", "a red square"],
         f"pixelgpt: {models['generate']} was trained without text prompts: --prompt need a text model"),
        (["vary", "--model", models["inpaint"], "--negative_prompt", "red", image],
         "was trained without text prompts: --negative_prompt need a text model (train one with --text_conditional)"),
        (["generate", "--model", text_model, "--prompt", "red square", "--class_label", "1"],
         "pixelgpt: give --prompt or --class_label, not both"),
        (["generate", "--model", text_model, "--prompt", " ".join(["red square"] * 20)],
         "reads at most 16 (max_text_length)"),
    ):
        assert message in refusal([*argv, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
