"""--text_conditional training (pixelgpt/training/text.py and the trainer's use of it): captions from an image
folder's metadata.jsonl, a learned model that draws the colour its prompt names, the prompt tokenizer saved with the
model and kept for a resume, the built-in captioned emoji in two stages, and the errors of bad caption settings."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from training_helpers import assert_same_weights, checkpoint_names, crash_after_saving, train, weights
from transformers import AutoModel, AutoProcessor

from pixelgpt.prompt_quality import PROMPT_GUIDANCE
from pixelgpt.training import loop
from pixelgpt.training.arguments import parse_args
from pixelgpt.training.pixelgpt import PROMPT_TOKENIZER, prompt_grid_prompts
from pixelgpt.training.text import drop_words

from conftest import make_text_model, parse_error

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
# 8x8 pixels, one bit per channel: the colours above are exact tokens.
PIXELS = ["--tokenizer", "none", "--quantization", "rgb", "--num_levels", "2", "--text_conditional"]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """48 images, a colour block on white, captioned "<colour> block" in a metadata.jsonl (datasets' imagefolder)."""
    root = tmp_path_factory.mktemp("captioned")
    lines = []
    for i in range(48):
        name = list(COLOURS)[i % 3]
        pixels = np.full((8, 8, 3), 255, np.uint8)
        top, left = (i // 3) % 3, (i // 9) % 3
        pixels[top : top + 5, left : left + 5] = COLOURS[name]
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"{name} block"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def colour_share(model, colour: str, guidance: float = 3.0) -> float:
    """Share of the pixels of 8 samples for "<colour> block" that have that colour exactly."""
    images = model.generate_images(8, prompt=f"{colour} block", guidance_scale=guidance, show_progress=False,
                                   generator=torch.Generator().manual_seed(0))
    pixels = np.stack([np.asarray(image) for image in images]).reshape(-1, 3)
    return float((pixels == COLOURS[colour]).all(1).mean())


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, captioned):
    return train(tmp_path_factory.mktemp("text"), "--train_data_dir", str(captioned), *PIXELS,
                 "--max_train_steps", "80", "--learning_rate", "5e-3")


def test_a_learned_text_model_draws_the_colour_its_prompt_names(text_run):
    model = AutoModel.from_pretrained(text_run, trust_remote_code=True)
    learned = {c: colour_share(model, c) for c in COLOURS}
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    untrained.processor = model.get_prompt_processor()
    untrained.image_processor = model.get_image_processor()
    before = {c: colour_share(untrained, c) for c in COLOURS}
    # A block is 25 of 64 pixels (39%); the untrained model spreads over 8 colours.
    assert min(learned.values()) > 0.25 and max(before.values()) < 0.2, (learned, before)
    other = {c: colour_share(model, c) for c in COLOURS}  # seeded: the same images again
    assert other == learned


def test_the_model_folder_holds_the_prompt_tokenizer_and_its_processor(text_run):
    names = {p.name for p in text_run.iterdir()}
    assert {"tokenizer.json", "processor_config.json", "processing_pixelgpt.py", "preprocessor_config.json"} <= names
    processor = AutoProcessor.from_pretrained(text_run, trust_remote_code=True)
    config = json.loads((text_run / "config.json").read_text())
    assert config["text_vocab_size"] == len(processor.tokenizer) and config["max_text_length"] == 16
    assert processor.decode_prompts(processor(text=["Red  block"])["text_ids"]) == ["red block"]
    # The run kept the tokenizer it trained from the start, for a resume: the same one.
    assert json.loads((text_run / PROMPT_TOKENIZER / "tokenizer.json").read_text())["model"]["vocab"] == \
        json.loads((text_run / "tokenizer.json").read_text())["model"]["vocab"]


RESUMED = ["--max_train_steps", "10", "--checkpointing_steps", "5", "--checkpoints_total_limit", "5"]


def test_a_resumed_text_run_ends_with_the_same_weights(tmp_path, captioned, text_run):
    straight = train(tmp_path, "--train_data_dir", str(captioned), *PIXELS, *RESUMED, name="straight")
    with mock.patch.object(loop, "save_checkpoint", crash_after_saving(loop.save_checkpoint)), \
            pytest.raises(KeyboardInterrupt):
        train(tmp_path, "--train_data_dir", str(captioned), *PIXELS, *RESUMED)
    assert checkpoint_names(tmp_path / "out") == ["checkpoint-5"]
    saved = (tmp_path / "out" / PROMPT_TOKENIZER / "tokenizer.json").read_bytes()
    train(tmp_path, "--train_data_dir", str(captioned), *PIXELS, *RESUMED, "--resume_from_checkpoint", "latest")
    assert (tmp_path / "out" / PROMPT_TOKENIZER / "tokenizer.json").read_bytes() == saved
    assert_same_weights(weights(tmp_path / "out"), weights(straight))


def test_the_built_in_captioned_emoji_train_in_two_stages(tmp_path):
    out = train(tmp_path, "--text_conditional", "--tokenizer_steps", "2", "--max_train_steps", "2",
                "--resolution", "16", "--tokenizer", "train")
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.image_tokenizer is not None and model.config.is_text_conditional
    card = (out / "README.md").read_text()
    assert "Twemoji graphics by Twitter, Inc. and other contributors, CC-BY 4.0" in card and "## Prompts" in card
    assert 'negative_prompt="square"' in card  # how to stress a word
    # 64 images teach too small a vocabulary to spell every judged prompt in 16 tokens: the judgement is skipped,
    # saying why, and the run still ends with its model.
    assert not (out / "prompt_quality.json").exists()
    images = model.generate_images(1, prompt=["purple square", "red heart"], show_progress=False)
    assert [image.size for image in images] == [(16, 16)] * 2


def test_caption_settings_are_checked(tmp_path, captioned):
    args = parse_args(["--text_conditional"])
    assert (args.data.builtin_data, args.image.resolution, args.image.tokenizer) == ("emoji", 64, "train")
    assert parse_args([]).data.builtin_data == "fashion"
    assert "does not combine with --class_conditional" in parse_error(parse_args, ["--text_conditional",
                                                                                   "--class_conditional"])
    with pytest.raises(ValueError, match=r"--caption_column 'caption', which the data lacks; columns are \['image', "
                                         r"'text'\]"):
        train(tmp_path, "--train_data_dir", str(captioned), *PIXELS, "--caption_column", "caption",
              "--max_train_steps", "1")


def test_a_streamed_captioned_folder_trains(tmp_path, captioned):
    out = train(tmp_path, "--train_data_dir", str(captioned), *PIXELS, "--streaming", "--max_train_steps", "3")
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.unknown_words("red green blue block") == []  # the tokenizer read the stream's captions


def test_word_dropout_leaves_words_out_in_order_and_prompt_dropout_empties_whole_prompts():
    torch.manual_seed(0)
    prompts = torch.tensor([[5, 6, 7, 8, 0, 0]] * 2000)
    dropped = drop_words(prompts, 0.0, 0.25, pad=0)
    kept = dropped != 0
    assert abs(kept.sum().item() / (4 * 2000) - 0.75) < 0.02  # each word kept with chance 0.75
    for row, mask in zip(dropped[:50], kept[:50]):
        words = row[mask].tolist()
        assert words == sorted(words) and mask.tolist() == sorted(mask.tolist(), reverse=True)  # in order, packed
    empty = (drop_words(prompts, 0.1, 0.0, pad=0) == 0).all(1).float().mean().item()
    assert abs(empty - 0.1) < 0.02
    assert torch.equal(drop_words(prompts, 0.0, 0.0, pad=0), prompts)  # no dropout: the prompts as they are


def test_the_grid_shows_prompts_spread_over_the_held_out_captions_that_fit():
    processor = make_text_model()[1]
    captions = [f"red square {'red ' * (i % 3)}".strip() for i in range(40)] + ["red " * 30, None, "blue heart"]
    prompts, cols = prompt_grid_prompts(processor, captions, num_samples=16)
    assert prompts == ["red square", "red square red", "red square red red", "blue heart"] and cols == 4
    many = [f"{'red ' * (i // 6)}blue {'heart ' * (i % 6)}".strip() for i in range(48)]  # 48 that fit in 16 tokens
    prompts, cols = prompt_grid_prompts(processor, many, num_samples=16)
    assert prompts == many[::6] and cols == 4
    assert prompt_grid_prompts(processor, ["red " * 30], 16)[0] == [""]  # none fits: the unconditional row


def test_a_text_run_on_the_built_in_emoji_judges_its_prompts_on_the_card(tmp_path):
    out = train(tmp_path, "--text_conditional", "--tokenizer_steps", "2", "--max_train_steps", "2",
                "--resolution", "16", "--tokenizer", "train", "--max_train_samples", "1000", "--quality_samples", "25")
    report = json.loads((out / "prompt_quality.json").read_text())
    assert report["sampling"]["num_samples"] == 1 and report["sampling"]["guidance_scale"] == PROMPT_GUIDANCE
    # 1,000 training captions teach a vocabulary that spells some test captions longer than the model reads:
    # retrieval asks for the others only (and says so), instead of the judgement failing.
    retrieval = report["retrieval"]
    assert 150 < retrieval["num_queries"] < retrieval["num_gallery"] == 193
    assert "Retrieval asked for" in (out / "README.md").read_text()
    results = json.loads((out / "eval_results.json").read_text())
    assert results["prompt_quality_skin_tone_order"] == report["skin_tones"]["trained_model_samples"]["in_order_share"]
    assert results["prompt_quality_retrieval_top5"] == report["retrieval"]["trained_model_samples"]["top_5"]
    assert results["prompt_quality_held_out_pairs_stressed"] == report["composition_stressed"][
        "trained_model_samples"]["accuracy"]
    assert results["prompt_quality_held_out_pairs_shaped_stressed"] == report["composition_stressed"][
        "trained_model_samples"]["colour_and_shape_accuracy"]
    card = ModelCard.load(out / "README.md")
    assert "## Do samples follow their prompts?" in card.text and card.data.pipeline_tag == "text-to-image"
    assert "| Composition, stressed |" in card.text and "| Composition, stressed: colour and shape right |" in card.text
    yaml = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert yaml["prompt_quality_colour_words"] == round(results["prompt_quality_colour_words"], 4)
    assert {r.dataset_name for r in card.data.eval_results} == {"Twemoji captions (built-in)"}
