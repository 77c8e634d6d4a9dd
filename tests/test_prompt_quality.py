"""pixelgpt.prompt_quality: the four prompt figures on synthetic images with known answers, and `measure_prompts`
on a stub model and on a tiny untrained text model (seconds; no shared data)."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from PIL import ImageDraw

from pixelgpt import PixelGPTImageProcessor
from pixelgpt import prompt_quality as pq
from pixelgpt.emoji_captions import COLOURS, HELD_OUT_PAIRS, SHAPES, colour_shape, emoji_caption

from conftest import REPO_ROOT, make_model, parse_error

# Twemoji's fills (as measured from the real images), and its five skin swatches light to dark.
FILLS = {"red": (221, 46, 68), "orange": (244, 144, 12), "yellow": (253, 203, 88), "green": (120, 177, 89),
         "blue": (85, 172, 238), "purple": (170, 142, 214), "brown": (193, 105, 79), "black": (49, 55, 61),
         "white": (230, 231, 232)}
SKIN = [(247, 222, 206), (243, 210, 162), (213, 171, 136), (175, 126, 87), (124, 83, 62)]


def drawn(colour, shape="square", size=16, mode="RGBA", extra=None) -> PILImage.Image:
    """A flat `shape` of `colour` on a transparent (RGBA) or white (RGB) background (a heart is a triangle pointing
    down, an outline of its own); `extra`: a second colour in a corner (a sleeve beside a hand)."""
    image = PILImage.new(mode, (size, size), (0, 0, 0, 0) if mode == "RGBA" else (255, 255, 255))
    low, high = size // 8, size - size // 8
    draw, box = ImageDraw.Draw(image), (low, low, high, high)
    if shape == "heart":
        draw.polygon([(low, low), (high, low), (size // 2, high)], fill=tuple(colour))
    else:
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=tuple(colour))
    if extra is not None:
        draw.rectangle((0, 0, size // 4, size // 4), fill=tuple(extra))
    return image


def grid_name(colour, shape) -> str:
    name = "heart" if (colour, shape) == ("red", "heart") else (
        f"{colour}_heart" if shape == "heart" else f"large_{colour}_{shape}")
    assert colour_shape(name) == (colour, shape)
    return name


def synthetic_dataset() -> DatasetDict:
    """The emoji set's layout in small: the trained colour x shape grid, two people in five tones and the skin
    swatches in train; the held-out pairs and two more images in test."""
    train = [(grid_name(c, s), drawn(FILLS[c], s)) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    train += [(f"skin-tone-{i + 2}", drawn(rgb)) for i, rgb in enumerate(SKIN)]
    train += [(f"{person}/{code}", drawn(SKIN[t], "circle", extra=sleeve))
              for person, sleeve in (("wave", (40, 90, 200)), ("clap", (250, 220, 40)))
              for t, code in enumerate(pq.TONE_CODES)]
    test = [(grid_name(c, s), drawn(FILLS[c], s)) for c, s in HELD_OUT_PAIRS]
    test += [("rocket", drawn((200, 30, 30), "circle", extra=(30, 30, 200))), ("tree", drawn((20, 140, 20)))]
    features = Features({"image": Image(), "text": Value("string"), "name": Value("string")})

    def split(rows):
        return Dataset.from_dict({"image": [image for _, image in rows], "text": [emoji_caption(n) for n, _ in rows],
                                  "name": [n for n, _ in rows]}, features=features)

    return DatasetDict(train=split(train), test=split(test))


# -------------------------------------------------------------------------------------------------- colour words
def test_a_purple_square_is_judged_purple_and_swapped_colours_are_judged_wrong():
    references = pq.colour_references({c: [drawn(FILLS[c], s) for s in SHAPES] for c in COLOURS})
    assert pq.nearest_colour(drawn(FILLS["purple"]), references) == "purple"
    assert pq.nearest_colour(drawn(FILLS["purple"], mode="RGB"), references) == "purple"  # over white, no alpha
    images = [drawn(FILLS["purple"]), drawn(FILLS["green"], "heart"), drawn(FILLS["white"], "circle")]
    right = pq.colour_accuracy(images, ["purple", "green", "white"], references)
    assert right["accuracy"] == 1.0 and right["per_group"] == {"purple": 1.0, "green": 1.0, "white": 1.0}
    swapped = pq.colour_accuracy(images, ["green", "purple", "black"], references, ["a", "b", "c"])
    assert swapped["accuracy"] == 0.0 and swapped["per_group"] == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_the_reference_is_the_mean_foreground_and_an_empty_image_has_no_colour():
    # Half the image blue, half background: the mean foreground is the blue, not blue mixed with white.
    image = PILImage.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.paste((85, 172, 238, 255), (0, 0, 10, 5))
    assert np.allclose(pq.mean_foreground(image), (85, 172, 238))
    assert pq.colour_references({"blue": [image, image]}) == {"blue": [85.0, 172.0, 238.0]}
    blank = PILImage.new("RGB", (10, 10), (255, 255, 255))
    assert pq.mean_foreground(blank) is None and pq.nearest_colour(blank, {"blue": [85, 172, 238]}) is None
    judged = pq.colour_accuracy([blank], ["blue"], {"blue": [85, 172, 238]})
    assert judged["accuracy"] == 0.0 and judged["no_foreground"] == 1  # nothing drawn is no colour named
    with pytest.raises(ValueError, match="no image of 'white' has a foreground"):
        pq.colour_references({"white": [blank]})


def test_a_sample_is_judged_the_shape_its_foreground_overlaps_most():
    outlines = pq.shape_outlines({s: [drawn(FILLS[c], s) for c in ("red", "white")] for s in SHAPES})
    assert {s: o.shape for s, o in outlines.items()} == {s: (pq.OUTLINE_SIZE,) * 2 for s in SHAPES}
    assert outlines["square"].all() and not outlines["circle"].all()  # framed: a square fills its frame
    for shape in SHAPES:  # any colour, over white or transparent, and a smaller, shifted copy
        assert pq.nearest_shape(drawn(FILLS["purple"], shape, mode="RGB"), outlines) == shape
        small = PILImage.new("RGB", (16, 16), "white")
        small.paste(drawn(FILLS["green"], shape, size=12), (3, 1), drawn(FILLS["green"], shape, size=12))
        assert pq.nearest_shape(small, outlines) == shape
    blank = PILImage.new("RGB", (16, 16), "white")
    assert pq.nearest_shape(blank, outlines) is None
    assert (pq.shape_outlines({"square": [drawn(FILLS["red"]), blank]})["square"] == outlines["square"]).all()
    with pytest.raises(ValueError, match="no image of 'heart' has a foreground"):
        pq.shape_outlines({"heart": [blank]})
    # "purple square" drawn as a purple heart, a purple square and a green square: colour, shape, both.
    references = pq.colour_references({c: [drawn(FILLS[c])] for c in COLOURS})
    images = [drawn(FILLS["purple"], "heart"), drawn(FILLS["purple"]), drawn(FILLS["green"])]
    judged = pq.colour_accuracy(images, ["purple"] * 3, references, ["purple square"] * 3, ["square"] * 3, outlines)
    assert judged["accuracy"] == judged["shape_accuracy"] == pytest.approx(2 / 3)
    assert judged["colour_and_shape_accuracy"] == pytest.approx(1 / 3)
    assert judged["per_group_colour_and_shape"] == {"purple square": pytest.approx(1 / 3)}
    assert "shape_accuracy" not in pq.colour_accuracy(images, ["purple"] * 3, references)  # colour only


# ----------------------------------------------------------------------------------------------------- skin tones
def test_a_lighter_to_darker_series_scores_100_percent_and_its_reverse_0():
    series = [drawn(rgb, "circle", extra=(40, 90, 200)) for rgb in SKIN]
    lightness = [pq.skin_lightness(image, SKIN) for image in series]
    assert all(a > b for a, b in zip(lightness, lightness[1:]))
    assert np.isclose(lightness[0], np.dot(SKIN[0], pq.LUMA))  # the sleeve is no skin
    ordered = pq.tone_order({"wave": [[v] for v in lightness], "clap": [[v, v] for v in lightness]})
    assert ordered["in_order_share"] == 1.0 and ordered["pairs"] == 20 and ordered["undecided_pairs"] == 0
    reverse = pq.tone_order({"wave": [[v] for v in lightness[::-1]]})
    assert reverse["in_order_share"] == 0.0 and reverse["per_person"] == {"wave": 0.0}


def test_a_tone_without_skin_leaves_its_pairs_undecided_at_half():
    assert pq.skin_lightness(drawn((40, 90, 200)), SKIN) is None  # blue: no skin pixel
    lightness = [[200.0], [180.0], [None], [120.0], [100.0]]  # the middle tone drew no skin
    result = pq.tone_order({"wave": lightness})
    assert result["undecided_pairs"] == 4 and result["in_order_share"] == (6 + 4 * 0.5) / 10
    assert pq.tone_order({"wave": [[100.0]] * 5})["in_order_share"] == 0.5  # all equal: chance


# ------------------------------------------------------------------------------------------------------ retrieval
def test_retrieval_of_an_exact_copy_is_top_1():
    gallery = [drawn(FILLS[c], s) for c in ("red", "blue", "green") for s in SHAPES]
    result = pq.retrieval([gallery[4].copy(), gallery[7].copy()], [4, 7], gallery)
    assert result == {"top_1": 1.0, "top_5": 1.0, "median_rank": 1.0}
    # The same images asked for as each other's (a blue circle for the red square): ranked lower.
    wrong = pq.retrieval([gallery[3], gallery[0]], [0, 3], gallery)
    assert wrong["top_1"] == 0.0 and wrong["median_rank"] > 1
    # Two gallery images with one caption: either is a hit.
    assert pq.retrieval([gallery[1]], [0], gallery, keys=["x", "x"] + list("abcdefg"))["top_1"] == 1.0


def test_features_compare_layout_and_palette_and_jittered_copies_are_still_found():
    red = drawn(FILLS["red"])
    feats = pq.features([red, red.resize((32, 32), PILImage.Resampling.NEAREST), PILImage.new("RGB", (8, 8), "white")])
    assert feats.shape == (3, 3 * 64 + 64) and torch.allclose(feats[0], feats[1])  # any image size
    assert feats[2, 3 * 64 + 63] == 0.5 and feats[0, 3 * 64 + 49] == 0.5  # white: all background; red: bin (3, 0, 1)
    gallery = [drawn(FILLS[c], s, size=32) for c in COLOURS for s in SHAPES]
    copies = pq.jittered(gallery, seed=0)  # up to 1 pixel at 32
    assert [c.size for c in copies] == [(32, 32)] * len(gallery) and copies[0].tobytes() != gallery[0].tobytes()
    assert pq.retrieval(copies, range(len(gallery)), gallery)["top_1"] == 1.0


def test_chance_levels():
    levels = pq.chance(9, 194)
    drawn_at_random = {"accuracy": pytest.approx(1 / 9), "shape_accuracy": pytest.approx(1 / 3),
                       "colour_and_shape_accuracy": pytest.approx(1 / 27)}
    assert levels["colour_words"] == levels["composition"] == drawn_at_random and levels["skin_tones"] == 0.5
    assert levels["retrieval"] == {"top_1": pytest.approx(1 / 194), "top_5": pytest.approx(5 / 194)}
    assert pq.chance(9, 3)["retrieval"]["top_5"] == 1.0 and "retrieval" not in pq.chance()


# --------------------------------------------------------------------------------------------------------- driver
class StubConfig:
    text_vocab_size, pixel_size = 10, 16


class Stub(torch.nn.Module):
    """A text model that draws each prompt's real image (`answers`), or, untrained (as `untrained_copy` builds it,
    from the config alone), black squares."""

    image_tokenizer = None

    def __init__(self, config, answers=None):
        super().__init__()
        self.config, self.answers, self.calls = config, answers, []

    @property
    def device(self):
        return torch.device("cpu")

    def generate_images(self, num_images, prompt, guidance_scale, generator, batch_size, show_progress, **kwargs):
        self.calls.append((num_images, list(prompt), guidance_scale, batch_size, kwargs))
        # Guided from another prompt, this stub draws black: the stressed figures must come from those samples.
        right = self.answers and "negative_prompt" not in kwargs
        draw = (lambda p: self.answers[p].copy()) if right else (lambda p: drawn(FILLS["black"]))
        return [draw(p) for p in prompt for _ in range(num_images)]


def test_measure_prompts_reports_each_figure_beside_the_untrained_model_the_real_images_and_chance():
    data = synthetic_dataset()
    answers = {row["text"]: row["image"] for split in ("train", "test") for row in data[split]}
    model = Stub(StubConfig(), answers).train()
    state = torch.get_rng_state()
    report = pq.measure_prompts(model, data, num_samples=2, guidance_scale=2.5, seed=3, batch_size=7)
    assert torch.equal(state, torch.get_rng_state()) and model.training  # left as it was
    assert model.calls[0][0] == 2 and model.calls[1][0] == 1 and model.calls[0][2:4] == (2.5, 7)
    assert len(model.calls[0][1]) == 22 + 5 + 10 and model.calls[1][1] == list(data["test"]["text"])
    stressed = model.calls[2]  # the same prompts again, each guided from itself without its colour or tone
    assert stressed[1] == model.calls[0][1] and stressed[2] == pq.STRESS_GUIDANCE
    negative = dict(zip(stressed[1], stressed[4]["negative_prompt"]))
    assert negative["purple square"] == "square" and negative["wave dark skin tone"] == "wave"
    assert set(negative.values()) == {"circle", "square", "heart", "wave", "clap"}
    assert stressed[4]["temperature"] == pq.STRESS_TEMPERATURE
    json.dumps(report)  # JSON-ready
    assert report["sampling"] == {"num_samples": 2, "retrieval_samples": 1, "guidance_scale": 2.5, "seed": 3,
                                  "batch_size": 7, "stress": {"guidance_scale": pq.STRESS_GUIDANCE,
                                                              "temperature": pq.STRESS_TEMPERATURE,
                                                              "negative_prompt": "the prompt without its colour or "
                                                                                 "skin-tone words"}}
    for name in ("colour_words_stressed", "composition_stressed"):
        assert report[name]["real_images"]["accuracy"] == 1.0 and report[name]["chance"]["accuracy"] == pytest.approx(
            1 / 9)
    assert report["colour_words_stressed"]["trained_model_samples"]["accuracy"] == pytest.approx(3 / 22)  # black
    assert report["composition_stressed"]["trained_model_samples"]["accuracy"] == 0.0
    tones = report["skin_tones_stressed"]
    assert tones["trained_model_samples"]["in_order_share"] == 0.5 and tones["real_images"]["in_order_share"] == 1.0
    for name, key in (("colour_words", "accuracy"), ("composition", "accuracy"), ("skin_tones", "in_order_share"),
                      ("retrieval", "top_1")):
        assert report[name]["trained_model_samples"][key] == 1.0 == report[name]["real_images"][key], name
    untrained = {name: report[name]["untrained_model_samples"] for name in ("colour_words", "composition")}
    assert untrained["colour_words"]["accuracy"] == pytest.approx(3 / 22)  # black, for the 3 black prompts
    assert untrained["composition"]["accuracy"] == 0.0 and set(untrained["composition"]["per_group"]) == {
        " ".join(pair) for pair in HELD_OUT_PAIRS}
    assert report["skin_tones"]["untrained_model_samples"]["in_order_share"] == 0.5  # no skin: undecided
    assert report["skin_tones"]["people"] == ["wave", "clap"] and report["retrieval"]["num_gallery"] == 7
    assert report["colour_words"]["chance"]["accuracy"] == pytest.approx(1 / 9)
    for name in ("colour_words", "composition"):  # the real images drawn back: every shape right too
        for part in ("trained_model_samples", "real_images"):
            assert report[name][part]["colour_and_shape_accuracy"] == 1.0 == report[name][part]["shape_accuracy"]
    assert report["retrieval"]["chance"] == {"top_1": pytest.approx(1 / 7), "top_5": pytest.approx(5 / 7)}
    table = pq.markdown(report)
    assert "| Colour words (share of the colour named) | 100.0% | 13.6% | 100.0% | 11.1% |" in table
    assert "purple square" in table and "7 test images" in table and "Samples per prompt: 2 (1 per" in table
    assert "| Composition, stressed | 0.0% | 0.0% | 100.0% | 11.1% |" in table
    assert "| Composition: colour and shape right | 100.0% | 0.0% | 100.0% | 3.7% |" in table
    assert "guidance 4, temperature 0.7" in table
    plain = pq.measure_prompts(Stub(StubConfig(), answers), data, num_samples=1, stress=False)
    assert "stress" not in plain["sampling"] and "composition_stressed" not in plain
    assert "stressed" not in pq.markdown(plain)


def test_a_prompt_is_stressed_by_guiding_from_it_without_its_colour_and_tone_words():
    assert pq.without_attributes("purple square") == "square"
    assert pq.without_attributes("large blue circle") == "large circle"
    assert pq.without_attributes("red") == ""  # the empty prompt: plain guidance
    assert pq.without_attributes("wave medium-light skin tone") == "wave"
    assert pq.without_attributes("man heart man light skin tone and dark skin tone") == "man heart man"
    assert pq.without_attributes("thunder cloud and rain") == "thunder cloud and rain"


class StressedStub(Stub):
    """Draws each prompt's real image, stressed too, but only when its negative prompt is that prompt's own."""

    def generate_images(self, num_images, prompt, guidance_scale, generator, batch_size, show_progress, **kwargs):
        negatives = kwargs.get("negative_prompt") or [None] * len(prompt)
        own = [bool(self.answers) and (n is None or n == pq.without_attributes(p))  # untrained: no answers
               for p, n in zip(prompt, negatives, strict=True)]
        return [self.answers[p].copy() if ok else drawn(FILLS["black"])
                for p, ok in zip(prompt, own) for _ in range(num_images)]


def test_stressed_samples_are_judged_against_their_own_prompts():
    data = synthetic_dataset()
    answers = {row["text"]: row["image"] for split in ("train", "test") for row in data[split]}
    report = pq.measure_prompts(StressedStub(StubConfig(), answers), data, num_samples=3)
    for name, key in (("colour_words", "accuracy"), ("composition", "accuracy"), ("skin_tones", "in_order_share")):
        assert report[f"{name}_stressed"]["trained_model_samples"][key] == 1.0, name


def test_measure_prompts_refuses_what_it_cannot_measure():
    data = synthetic_dataset()

    class NoText(StubConfig):
        text_vocab_size = 0

    with pytest.raises(ValueError, match="needs a text model"):
        pq.measure_prompts(Stub(NoText()), data)
    with pytest.raises(ValueError, match="num_samples >= 1"):
        pq.measure_prompts(Stub(StubConfig()), data, num_samples=0)
    without_swatches = DatasetDict(train=data["train"].filter(lambda r: not r["name"].startswith("skin-tone")),
                                   test=data["test"])
    with pytest.raises(ValueError, match="five skin-tone swatches"):
        pq.prompt_sets(without_swatches)


def tiny_text_model(captions):
    """A tiny untrained text model (5x5, 4 levels per channel) and its processor, the tokenizer on `captions`."""
    from pixelgpt.training.text import build_text_processor

    image_processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=5)
    processor = build_text_processor(image_processor, list(captions), 300)
    model = make_model(vocab_size=64, image_size=5, text_vocab_size=len(processor.tokenizer),
                       max_text_length=processor.max_text_length)
    return model, processor


def test_measure_prompts_on_a_tiny_untrained_text_model():
    data = synthetic_dataset()
    model, processor = tiny_text_model(data["train"]["text"])
    report = pq.measure_prompts(model, data, num_samples=1, seed=0, processor=processor)
    json.dumps(report)
    for name, key in (("colour_words", "accuracy"), ("composition", "accuracy"), ("skin_tones", "in_order_share"),
                      ("retrieval", "top_5")):
        for part in ("trained_model_samples", "untrained_model_samples", "real_images"):
            assert 0.0 <= report[name][part][key] <= 1.0, (name, part)
    # The real images are seen through the model's quantization (4 levels per channel, 5x5) and still judged.
    assert report["colour_words"]["real_images"]["accuracy"] == 1.0
    # White (230, 231, 232) becomes background at 4 levels per channel: its prompts cannot be judged, so left out.
    words = report["colour_words"]
    assert words["unjudged_colours"] == ["white"] and "white" not in words["references"]
    assert words["real_images"]["num_images"] == 22 - 3 and words["chance"]["accuracy"] == pytest.approx(1 / 8)


# ------------------------------------------------------------------------------------------------ the command line
def load_example():
    import importlib.util

    path = REPO_ROOT / "examples" / "prompt_quality.py"
    spec = importlib.util.spec_from_file_location("prompt_quality_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_line_measures_a_saved_text_model_on_the_built_in_emoji(tmp_path, capsys):
    from pixelgpt.default_data import load_emoji_dataset

    example = load_example()
    model, processor = tiny_text_model(load_emoji_dataset()["train"]["text"])
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    report = example.main(example.build_parser().parse_args([
        "--model", str(tmp_path / "model"), "--num_samples", "1", "--seed", "5", "--batch_size", "128",
        "--device", "cpu", "--output_json", str(tmp_path / "report.json")]))
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert "| Skin tones (tone pairs in order of lightness) |" in capsys.readouterr().out
    assert report["retrieval"]["num_gallery"] == len(load_emoji_dataset()["test"])
    assert len(report["skin_tones"]["people"]) == 6 and len(report["composition"]["prompts"]) == 5
    assert report["sampling"]["seed"] == 5 and report["sampling"]["batch_size"] == 128


def test_the_command_line_refuses_zero_samples():
    example = load_example()
    argv = ["--model", "m", "--num_samples", "0"]
    assert "must be at least 1" in parse_error(example.build_parser().parse_args, argv)
