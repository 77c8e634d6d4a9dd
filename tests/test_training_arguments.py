"""pixelgpt.training.arguments: the flags of both trainers as frozen dataclasses, what `resolve()` settles, the
values refused (with the accepted range), and the same arguments built in Python. No training."""

import dataclasses
import sys
from unittest import mock

import pytest
from PIL import Image

from pixelgpt import PixelGPTConfig, PixelGPTVQVAEConfig, training
from pixelgpt.training.arguments import SHARED_IMAGE_FLAGS, TOKENIZER_SKIPPED_DATA

from conftest import parse_error


def field_names(*classes):
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("parse, build", [(training.parse_args, training.build_parser),
                                          (training.parse_tokenizer_args, training.build_tokenizer_parser)])
def test_help_documents_every_argument(parse, build):
    with mock.patch.object(sys, "argv", ["train.py", "--help"]), mock.patch.object(sys, "stdout"), \
            pytest.raises(SystemExit) as exit_info:
        parse()
    assert exit_info.value.code == 0
    undocumented = [a.dest for a in build()._actions if a.dest != "help" and not a.help]
    assert undocumented == []


def test_every_flag_is_a_field_of_one_part_and_every_field_a_flag():
    flags = {a.dest for a in training.build_parser()._actions} - {"help"}
    parts = [f.type for f in dataclasses.fields(training.TrainingArguments)]
    assert flags == field_names(*parts)
    # The parts name different things (but the image flags, which stage one of --tokenizer train shares with the
    # processor): flattened, no flag hides another.
    assert len(training.parse_args([]).flat()) == sum(len(dataclasses.fields(cls)) for cls in parts) - len(
        SHARED_IMAGE_FLAGS)
    tokenizer_flags = {a.dest for a in training.build_tokenizer_parser()._actions} - {"help"}
    tokenizer_parts = [f.type for f in dataclasses.fields(training.TokenizerTrainingArguments)]
    assert tokenizer_flags == field_names(*tokenizer_parts) - set(TOKENIZER_SKIPPED_DATA)


@pytest.mark.parametrize("argv, message", [
    (["--quantization", "palette"], "needs --fit_palette"),
    (["--train_data_dir", "a", "--dataset_name", "b"], "not both"),
    (["--train_batch_size", "0"], "--train_batch_size must be >= 1"),
    (["--shuffle_buffer_size", "0"], "--shuffle_buffer_size must be >= 1, got 0"),
    (["--task", "translate"], "--task translate needs paired source images"),
    (["--task", "translate", "--source_dir", "s"], "--source_dir pairs with --train_data_dir"),
    (["--source_column", "s"], "are for --task translate"),
    (["--task", "translate", "--train_data_dir", "t", "--source_dir", "s", "--source_column", "c"],
     "--source_column or --source_dir, not both"),
    (["--task", "inpaint", "--parallel_tokens", "4"], "--parallel_tokens needs --task generate"),
    (["--inpaint_hole_weight", "0"], "--inpaint_hole_weight must be in (0, 100]"),
    (["--inpaint_box_sides", "0.75", "0.25"], "LOW <= HIGH <= 1 and HIGH > 0, got 0.75 0.25"),
    (["--inpaint_box_sides", "0", "0"], "--inpaint_box_sides must be two fractions"),
    (["--inpaint_box_warmup", "2"], "--inpaint_box_warmup must be in [0, 1]"),
    (["--task", "colorize", "--class_conditional"], "does not combine with --task colorize"),
    (["--task", "upscale", "--no-aligned_condition", "--no-condition_prefix"],
     "leaves the model no way to read its condition"),
    (["--streaming"], "--streaming needs --max_train_steps"),
    (["--streaming", "--max_train_steps", "1", "--task", "translate", "--train_data_dir", "a", "--source_dir", "b"],
     "--source_dir pairs files"),
    (["--tokenizer", "x", "--task", "colorize"], "--task colorize with --tokenizer needs --resolution"),
    # Numbers that cannot work.
    (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
    (["--max_train_steps", "-3"], "--max_train_steps must be >= 1, got -3"),
    (["--checkpoints_total_limit", "-1"], "--checkpoints_total_limit must be >= 1, or 0 to keep every checkpoint"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number > 0"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1"),
    (["--ema_decay", "nan"], "--ema_decay must be in [0, 1), got nan"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite number >= 0"),
    (["--max_grad_norm", "-1"], "--max_grad_norm must be a finite number >= 0 (0 turns it off), got -1.0"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0"),
    (["--lr_warmup_steps", "-3"], "--lr_warmup_steps must be >= 0, got -3"),
    (["--adam_beta2", "1.5"], "--adam_beta2 must be in [0, 1), got 1.5"),
])
def test_values_that_cannot_work_are_refused_with_the_accepted_range(argv, message):
    assert message in parse_error(training.parse_args, argv)


@pytest.mark.parametrize("argv, message", [
    (["--resolution", "30"], "--resolution must be in [8, 1024] and a multiple of --downsample_factor (4), got 30"),
    (["--fsq_levels", "1", "4"], "`fsq_levels` must be a non-empty list of ints in [2, 64]"),
    (["--base_channels", "12"], "`base_channels` must be a positive multiple of 8"),
    (["--disc_weight", "nan"], "--disc_weight must be a finite number >= 0"),
    (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
])
def test_impossible_tokenizer_flags_are_refused(argv, message):
    assert message in parse_error(training.parse_tokenizer_args, argv)


def test_resolve_settles_the_values_that_follow_from_others():
    assert training.parse_args([]).image.resolution == 28  # the built-in 28x28 images
    assert training.parse_args(["--train_data_dir", "x"]).image.resolution == 32
    palette = training.parse_args(["--fit_palette"]).image
    assert (palette.fit_palette, palette.quantization) == (True, "palette")
    paired = training.parse_args(["--task", "translate", "--train_data_dir", "t", "--source_dir", "s", "--tokenizer",
                                  "none"])
    assert paired.data.source_column == "source"  # the column that pairing the folders adds
    assert paired.model.condition_size == 32 and paired.model.condition_quantization == "gray8"  # gray images
    colour_pairs = training.parse_args(["--task", "translate", "--source_column", "s", "--quantization", "rgb"])
    assert colour_pairs.model.condition_quantization == "rgb" and colour_pairs.data.source_column == "s"
    upscale = training.parse_args(["--task", "upscale", "--resolution", "16", "--quantization", "gray8"]).model
    assert (upscale.condition_size, upscale.condition_quantization) == (4, "gray8")
    colour = training.parse_args(["--task", "colorize", "--resolution", "8", "--quantization", "rgb"]).model
    assert (colour.condition_size, colour.condition_quantization) == (8, "gray8")
    given = training.parse_args(["--task", "upscale", "--condition_size", "3", "--condition_quantization", "rgb"])
    assert given.trains_tokenizer  # --tokenizer auto: 28x28 built-in images, 7x7 tokens
    assert (given.model.condition_size, given.model.condition_quantization) == (3, "rgb")
    generate = training.parse_args([]).model
    assert (generate.condition_size, generate.condition_quantization) == (None, None)  # not a conditional task
    assert training.parse_tokenizer_args([]).tokenizer.resolution == 28
    assert training.parse_tokenizer_args(["--train_data_dir", "x"]).tokenizer.resolution == 64


def save_tokenizer_config(folder, **overrides):
    PixelGPTVQVAEConfig(**dict(dict(image_size=16, base_channels=8, fsq_levels=[3, 3, 3]), **overrides)) \
        .save_pretrained(folder)
    return str(folder)


def test_resolve_reads_the_tokenizer_folder_and_refuses_what_is_not_one(tmp_path):
    tokenizer = save_tokenizer_config(tmp_path / "tok")
    stage_two = training.parse_args(["--tokenizer", tokenizer])
    assert stage_two.image.resolution == 16  # the tokenizer's own
    upscale = training.parse_args(["--tokenizer", tokenizer, "--task", "upscale", "--resolution", "16"]).model
    assert upscale.condition_size == 4  # a quarter of the pixel side, as without a tokenizer
    assert upscale.condition_quantization == "gray8"  # the built-in images are gray
    folder = training.parse_args(["--tokenizer", tokenizer, "--task", "upscale", "--resolution", "16",
                                  "--train_data_dir", "x"]).model
    assert folder.condition_quantization == "rgb"  # colour images: --quantization (default gray) is unused
    assert "must be a multiple of the tokenizer's downsampling factor (4)" in parse_error(
        training.parse_args, ["--tokenizer", tokenizer, "--resolution", "18"])
    # A missing folder is named as one (not the Hub's repo-id error); an image folder holds no model; a file is none.
    assert "--tokenizer " + str(tmp_path / "missing") + ": no such folder" in parse_error(
        training.parse_args, ["--tokenizer", str(tmp_path / "missing")])
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "a.png")
    assert "holds no saved model (no config.json naming a model type)" in parse_error(
        training.parse_args, ["--tokenizer", str(tmp_path / "images")])
    assert ": a file." in parse_error(training.parse_args, ["--tokenizer", str(tmp_path / "images" / "a.png")])
    # A folder of another model (here: a PixelGPT generation model) is refused, not loaded with random weights.
    PixelGPTConfig(vocab_size=27, image_size=4, hidden_size=16, num_hidden_layers=1,
                   num_attention_heads=1).save_pretrained(tmp_path / "not-a-tokenizer")
    assert "holds a 'pixelgpt' model, not a PixelGPT image tokenizer" in parse_error(
        training.parse_args, ["--tokenizer", str(tmp_path / "not-a-tokenizer")])


def test_flags_of_every_kind_parse_into_their_types():
    args = training.parse_args(["--no-class_embedding", "--use_ema", "--inpaint_box_sides", "0.25", "0.75",
                                "--learning_rate", "3e-3", "--max_train_steps", "7"])
    assert args.model.class_embedding is False and args.model.aligned_condition is True
    assert args.run.use_ema is True and args.run.learning_rate == 3e-3 and args.run.max_train_steps == 7
    assert args.model.inpaint_box_sides == (0.25, 0.75)
    assert training.parse_tokenizer_args(["--fsq_levels", "5", "5"]).tokenizer.fsq_levels == [5, 5]
    # A list default is copied for each instance, never shared.
    a, b = training.TokenizerArguments(), training.TokenizerArguments()
    assert a.fsq_levels == [8, 5, 5, 5] and a.fsq_levels is not b.fsq_levels


def test_arguments_built_in_python_equal_the_command_line_and_stay_frozen():
    built = training.TrainingArguments(data=training.DataArguments(train_data_dir="imgs"),
                                       run=training.RunArguments(output_dir="o", max_train_steps=3),
                                       image=training.ImageArguments(resolution=16),
                                       model=training.ModelArguments(task="upscale")).resolve()
    parsed = training.parse_args(["--train_data_dir", "imgs", "--output_dir", "o", "--max_train_steps", "3",
                                  "--resolution", "16", "--task", "upscale"])
    assert built == parsed and built.resolve() == built  # resolving again changes nothing
    assert built.model.condition_size == 4 and built.flat()["condition_size"] == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.run.output_dir = "elsewhere"
    moved = dataclasses.replace(built, run=dataclasses.replace(built.run, output_dir="elsewhere"))
    assert moved.run.output_dir == "elsewhere" and built.run.output_dir == "o"
    tokenizer = training.TokenizerTrainingArguments(tokenizer=training.TokenizerArguments(fsq_levels=[5, 5])).resolve()
    assert tokenizer == training.parse_tokenizer_args(["--fsq_levels", "5", "5"])
    assert tokenizer.tokenizer.config().codebook_size == 25


@pytest.mark.parametrize("part, message", [
    (training.RunArguments(train_batch_size=0), "--train_batch_size must be >= 1, got 0"),
    (training.RunArguments(checkpoints_total_limit=-2), "--checkpoints_total_limit must be >= 1, or 0"),
    (training.DataArguments(eval_fraction=1.0), "--eval_fraction must be in (0, 1), got 1.0"),
    (training.ModelArguments(parallel_tokens=65), "--parallel_tokens must be in [1, 64]"),
    (training.TokenizerArguments(resolution=30), "--resolution must be in [8, 1024] and a multiple of"),
    (training.TrainingArguments(model=training.ModelArguments(task="translate")), "--task translate needs paired"),
])
def test_a_part_built_in_python_is_checked_with_a_value_error(part, message):
    with pytest.raises(ValueError) as info:
        part.resolve() if hasattr(part, "resolve") else part.check()
    assert message in str(info.value)


def test_tokenizer_train_settles_stage_one_from_the_image_flags():
    both = training.parse_args(["--tokenizer", "train", "--resolution", "16", "--downsample_factor", "8",
                                "--tokenizer_steps", "5"])
    assert both.trains_tokenizer and both.image.tokenizer_steps == 5
    assert (both.tokenizer.resolution, both.tokenizer.downsample_factor) == (16, 8)
    assert training.parse_args(["--tokenizer", "train"]).tokenizer.resolution == 28  # the built-in images' side
    assert "--resolution must be in [8, 1024] and a multiple of --downsample_factor (8)" in parse_error(
        training.parse_args, ["--tokenizer", "train", "--resolution", "20", "--downsample_factor", "8"])
    assert "--tokenizer train with --streaming needs --tokenizer_steps" in parse_error(
        training.parse_args, ["--tokenizer", "train", "--streaming", "--max_train_steps", "9"])
    assert "--tokenizer_steps is for --tokenizer train" in parse_error(training.parse_args, ["--tokenizer_steps", "3",
                                                                                            "--tokenizer", "none"])
    assert "--tokenizer_steps must be >= 1, got 0" in parse_error(
        training.parse_args, ["--tokenizer", "train", "--tokenizer_steps", "0"])


@pytest.mark.parametrize("argv, trains", [
    ([], True),                                        # the built-in 28x28 images: a 7x7 token grid
    (["--train_data_dir", "x"], True),                 # folders default to 32x32: 8x8 tokens
    (["--resolution", "16"], True),                    # a 4x4 grid, the smallest auto trains for
    (["--resolution", "12"], False),                   # 3x3 tokens: pixels
    (["--resolution", "18"], False),                   # not a multiple of the factor 4
    (["--quantization", "gray"], False),               # a token scheme of pixels, given: pixels
    (["--fit_palette"], False),
    (["--streaming", "--max_train_steps", "5"], False),  # no known size to budget stage one by
    (["--tokenizer", "none"], False),
    (["--tokenizer", "train", "--resolution", "12"], True),  # asked for: trained whatever the size
])
def test_tokenizer_auto_trains_one_when_the_grid_is_4x4_and_nothing_asks_for_pixels(argv, trains):
    args = training.parse_args(argv)
    assert args.trains_tokenizer is trains
    assert args.image.tokenizer == ("train" if trains else None)
    assert args.image.quantization == ("palette" if "--fit_palette" in argv else "gray")  # unused on tokens


def test_on_tokens_colorize_and_translate_read_the_cell_under_each_token_and_upscale_one_pixel():
    from pixelgpt.training.pixelgpt import condition_patch_size

    colorize = training.parse_args(["--task", "colorize", "--train_data_dir", "x", "--resolution", "64"]).model
    assert (colorize.condition_size, colorize.condition_quantization) == (64, "gray8")
    assert condition_patch_size(64, 16, tokenizer=object()) == 4  # 16x16 tokens: a 4x4 cell each, 256 rows
    upscale = training.parse_args(["--task", "upscale"]).model  # built-in gray images: 8-bit gray
    assert (upscale.condition_size, upscale.condition_quantization) == (7, "gray8")
    assert condition_patch_size(7, 7, tokenizer=object()) == 1
    folder = training.parse_args(["--task", "translate", "--train_data_dir", "t", "--source_dir", "s"]).model
    assert (folder.condition_size, folder.condition_quantization) == (32, "rgb")  # colour folders: rgb
    coarse = training.parse_args(["--task", "upscale", "--resolution", "32", "--downsample_factor", "8"]).model
    assert coarse.condition_size == 4
    # a size given: a whole multiple of the grid is read in cells, any other size one pixel per row; pixels: 1
    assert condition_patch_size(16, 8, tokenizer=object()) == 2 and condition_patch_size(12, 8, object()) == 1
    assert condition_patch_size(32, 32, tokenizer=None) == 1 and condition_patch_size(None, 8, object()) == 1


def test_run_length_defaults_to_the_trainers_budget_and_quality_flags_are_checked():
    assert training.parse_args([]).run.num_epochs is None  # the trainer's budget: docs/training.md#step-budgets
    assert training.parse_args(["--num_epochs", "3"]).run.num_epochs == 3
    model = training.parse_args(["--class_conditional"]).model
    assert (model.quality_samples, model.quality_guidance) == (200, [3.0, 1.0, 2.0, 4.0, 5.0])
    assert "--quality_samples must be >= 0" in parse_error(training.parse_args, ["--quality_samples", "-1"])
    assert "--quality_guidance scales must be finite and >= 0" in parse_error(
        training.parse_args, ["--quality_guidance", "3", "nan"])


def test_a_folder_of_small_images_defaults_to_their_own_side(tmp_path):
    for side, name in ((20, "small"), (50, "large"), (30, "odd")):
        (tmp_path / name / "a").mkdir(parents=True)
        Image.new("L", (side + 6, side)).save(tmp_path / name / "a" / "0.png")  # the smaller side counts
    small, large, odd = (str(tmp_path / name) for name in ("small", "large", "odd"))
    assert training.parse_args(["--train_data_dir", small]).image.resolution == 20  # not enlarged to 32 (refused)
    assert training.parse_args(["--train_data_dir", large]).image.resolution == 32  # at most 32
    assert training.parse_args(["--train_data_dir", odd]).image.resolution == 28  # a multiple of 4
    assert training.parse_tokenizer_args(["--train_data_dir", large]).tokenizer.resolution == 48  # 64 at most
    assert training.parse_tokenizer_args(["--train_data_dir", odd, "--downsample_factor", "8"]).tokenizer.resolution \
        == 24
    assert training.parse_args(["--train_data_dir", str(tmp_path / "missing")]).image.resolution == 32  # named later
    assert training.parse_args(["--dataset_name", str(tmp_path / "small")]).image.resolution == 32  # not read here
