"""PixelGPTProcessor: prompts to the ids a text model reads, the limits it refuses, and its round trip through a
saved folder, AutoProcessor and a python without the package (from a folder and from a Hub-cache layout)."""

import json
import shutil

import numpy as np
import pytest

from pixelgpt.training.text import MAX_TEXT_LENGTH, MIN_TEXT_LENGTH, build_text_processor, caption_ids

from conftest import TEXT_CAPTIONS, make_text_model, run_without_pixelgpt, save_text_model

REVISION = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def processor():
    return make_text_model()[1]


def test_prompts_become_padded_ids_of_the_model_length(processor):
    ids = processor(text=["red square", "blue heart", ""], return_tensors="np")["text_ids"]
    assert ids.shape == (3, processor.max_text_length) == (3, MIN_TEXT_LENGTH)
    pad = processor.tokenizer.pad_token_id
    assert pad == 0 and (ids[2] == pad).all()  # the empty prompt is all padding: unconditional
    assert (ids[0, :2] != pad).all() and (ids[0, 2:] == pad).all()
    assert processor.decode_prompts(ids) == ["red square", "blue heart", ""]
    assert processor.decode_prompts(processor.encode_prompts("  RED   Square ")) == ["red square"]  # normalised


def test_images_and_text_together(processor):
    image = np.zeros((5, 5, 3), np.uint8)
    out = processor(images=[image, image], text=["red square", "blue circle"])
    assert set(out) == {"input_ids", "text_ids"} and out["input_ids"].shape == (2, 26)
    assert out["text_ids"].shape == (2, processor.max_text_length)
    with pytest.raises(ValueError, match="Give `images`, `text`"):
        processor()


def test_too_long_prompt_is_refused_naming_the_limit(processor):
    words = " ".join(["red"] * (processor.max_text_length + 1))
    with pytest.raises(ValueError, match=f"17 tokens long; this model reads at most {processor.max_text_length}"):
        processor(text=[words])
    assert processor(text=" ".join(["red"] * processor.max_text_length))["text_ids"].shape[1] == 16  # exactly fits


@pytest.mark.parametrize("bad", [5, None, [], ["red", 3], [["red"]]])
def test_prompt_types_are_checked(processor, bad):
    with pytest.raises(ValueError, match="A prompt must be a string or a non-empty list of strings"):
        processor.encode_prompts(bad)


def test_unknown_words_are_read_as_pieces_and_named(processor):
    assert processor.unknown_words("red square") == []
    assert processor.unknown_words("teal squares") == ["teal", "squares"]
    ids = processor.encode_prompts("teal")[0]
    tokens = processor.tokenizer.convert_ids_to_tokens([i for i in ids if i])
    # A word never seen is spelled with the pieces the tokenizer knows (characters at worst), never dropped.
    assert tokens and "".join(t.removeprefix("##") for t in tokens) in ("teal", "[UNK]" * len(tokens))
    unseen = processor.tokenizer.convert_ids_to_tokens(list(processor.encode_prompts("ß水")[0][:2]))
    assert "[UNK]" in unseen  # characters no caption had


def test_model_length_follows_the_longest_caption_within_bounds():
    image_processor = make_text_model()[1].image_processor
    long = build_text_processor(image_processor, ["a b c d e f g h i j k l m n o p q r s t"] * 3, 50)
    assert long.max_text_length == 20
    longer = build_text_processor(image_processor, [" ".join("abcdefghijklmnopqrstuvwxyz" * 2)] * 3, 50)
    assert longer.max_text_length == MAX_TEXT_LENGTH
    ids = caption_ids(longer, [" ".join("abcdefghijklmnopqrstuvwxyz" * 2), None])  # training cuts, None is empty
    assert [len(r) for r in ids] == [MAX_TEXT_LENGTH] * 2 and ids[1] == [0] * MAX_TEXT_LENGTH
    with pytest.raises(ValueError, match="every caption is empty"):
        build_text_processor(image_processor, ["", None], 50)


def test_tokenizer_is_deterministic():
    image_processor = make_text_model()[1].image_processor
    a, b = (build_text_processor(image_processor, TEXT_CAPTIONS, 60) for _ in range(2))
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


LOAD = """
    import json, sys
    from transformers import AutoModel, AutoProcessor
    source = {source!r}
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    model = AutoModel.from_pretrained(source, trust_remote_code=True)
    assert "pixelgpt" not in type(processor).__module__.split(".")[0], type(processor).__module__
    ids = processor(text=["red square", "blue circle"], return_tensors="np")["text_ids"]
    import torch
    tokens = model.generate_images(2, prompt=["red square", "blue circle"], guidance_scale=2.0, output_type="tokens",
                                   generator=torch.Generator().manual_seed(0), show_progress=False)
    print(json.dumps({{"class": type(processor).__name__, "ids": ids.tolist(), "tokens": tokens.tolist()}}))
"""


def expected_outputs(folder):
    import torch

    from pixelgpt import PixelGPTForImageGeneration
    from pixelgpt.processing.processing_pixelgpt import PixelGPTProcessor

    processor = PixelGPTProcessor.from_pretrained(folder)
    model = PixelGPTForImageGeneration.from_pretrained(folder)
    tokens = model.generate_images(2, prompt=["red square", "blue circle"], guidance_scale=2.0, output_type="tokens",
                                   generator=torch.Generator().manual_seed(0), show_progress=False)
    return processor(text=["red square", "blue circle"], return_tensors="np")["text_ids"].tolist(), tokens.tolist()


def test_saved_processor_and_model_load_without_the_package(tmp_path):
    folder = tmp_path / "text-model"
    save_text_model(folder)
    assert {"processor_config.json", "tokenizer.json", "processing_pixelgpt.py"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"].keys() >= {"text-to-image"}
    ids, tokens = expected_outputs(folder)
    out = json.loads(run_without_pixelgpt(LOAD.format(source=str(folder))).strip().splitlines()[-1])
    assert out == {"class": "PixelGPTProcessor", "ids": ids, "tokens": tokens}

    # The same folder as a Hub repo in the cache layout, loaded by repo id offline.
    home = tmp_path / "hf-home"
    snapshot = home / "hub" / "models--user--pixelgpt-text" / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    (home / "hub" / "models--user--pixelgpt-text" / "refs").mkdir()
    (home / "hub" / "models--user--pixelgpt-text" / "refs" / "main").write_text(REVISION)
    out = run_without_pixelgpt(LOAD.format(source="user/pixelgpt-text"), env={"HF_HOME": str(home)})
    assert json.loads(out.strip().splitlines()[-1]) == {"class": "PixelGPTProcessor", "ids": ids, "tokens": tokens}
