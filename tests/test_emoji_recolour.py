"""pixelgpt.emoji_recolour: recoloured copies of the built-in emoji move exactly one colour's pixels to another
colour's reference, name the new colour in the caption, and never write a held-out colour x shape pair."""

import numpy as np
import pytest
from PIL import Image

from pixelgpt.default_data import load_emoji_dataset
from pixelgpt.emoji_captions import COLOURS, HELD_OUT_PAIRS, SHAPES, colour_shape
from pixelgpt.emoji_recolour import (
    OPAQUE,
    RECOLOURED_COPIES,
    SHAPE_OVERLAP,
    dominant_colour,
    grid_outlines,
    grid_references,
    overlap,
    recolour,
    recoloured_caption,
    recoloured_rows,
    writes_held_out_pair,
)

REFERENCES = {c: np.array(rgb, dtype=np.float64) for c, rgb in (
    ("red", (220, 40, 60)), ("green", (120, 180, 90)), ("blue", (90, 170, 240)), ("white", (230, 230, 230)))}


@pytest.fixture(scope="module")
def real():
    return load_emoji_dataset(grid_repeats=1, recoloured_copies=0)["train"]


@pytest.fixture(scope="module")
def test_captions():
    return load_emoji_dataset(grid_repeats=1, recoloured_copies=0)["test"]["text"]


@pytest.fixture(scope="module")
def copies(real, test_captions):
    return recoloured_rows(real, avoid=test_captions)


def picture(fill: dict) -> Image.Image:
    """A 10x10 RGBA image: rows 0..k of each (rgb, rows) in order, the rest transparent."""
    rgba, row = np.zeros((10, 10, 4), np.uint8), 0
    for rgb, rows in fill:
        rgba[row:row + rows] = (*rgb, 255)
        row += rows
    return Image.fromarray(rgba, "RGBA")


def test_captions_name_the_new_colour():
    assert recoloured_caption("red apple", "red", "blue") == "blue apple"
    assert recoloured_caption("small red triangle", "red", "green") == "small green triangle"
    assert recoloured_caption("apple", "red", "blue") == "blue apple"
    assert recoloured_caption("reddish thing", "red", "blue") == "blue reddish thing"  # whole words only


def test_held_out_pairs_are_recognised_in_any_caption():
    assert writes_held_out_pair("green heart with arrow") and writes_held_out_pair("two purple squares")
    assert not writes_held_out_pair("green circle") and not writes_held_out_pair("purple heart")
    for colour, shape in HELD_OUT_PAIRS:
        assert writes_held_out_pair(f"big {colour} {shape}")


def test_recolour_moves_one_colour_by_the_references_difference():
    image = picture([((200, 30, 50), 6), ((90, 170, 240), 2)])  # a dark red (nearest red), a blue stripe
    out = np.asarray(recolour(image, "red", "green", REFERENCES)).astype(int)
    shift = (REFERENCES["green"] - REFERENCES["red"]).astype(int)
    assert (out[:6, :, :3] == np.array((200, 30, 50)) + shift).all()  # red's shading moved with it
    assert (out[6:8, :, :3] == (90, 170, 240)).all() and (out[8:, :, 3] == 0).all()  # blue and alpha stay
    assert (out[:8, :, 3] == 255).all()


def test_dominant_colour_needs_most_opaque_pixels_near_one_reference():
    assert dominant_colour(picture([((220, 40, 60), 7), ((90, 170, 240), 3)]), REFERENCES) == "red"
    assert dominant_colour(picture([((220, 40, 60), 5), ((90, 170, 240), 5)]), REFERENCES) is None
    assert dominant_colour(picture([((120, 0, 200), 10)]), REFERENCES) is None  # near no reference
    assert dominant_colour(picture([]), REFERENCES) is None  # nothing opaque


def test_overlap_is_intersection_over_union_of_the_opaque_pixels():
    outline = np.zeros((10, 10), bool)
    outline[:5] = True
    assert overlap(picture([((1, 2, 3), 5)]), outline) == 1.0
    assert overlap(picture([((1, 2, 3), 10)]), outline) == 0.5
    assert overlap(picture([]), np.zeros((10, 10), bool)) == 0.0


def test_references_are_the_grid_emoji_means(real):
    references = grid_references(real)
    assert list(references) == list(COLOURS)
    purple = next(row for row in real if colour_shape(row["name"]) == ("purple", "heart"))
    rgba = np.asarray(purple["image"])
    assert np.linalg.norm(references["purple"] - rgba[rgba[..., 3] > OPAQUE][:, :3].mean(0)) < 10
    with pytest.raises(ValueError, match="no colour x shape emoji"):
        grid_references(real.select(range(10)))


def test_no_copy_is_a_held_out_pair_by_caption_or_by_shape(real, copies, test_captions):
    # Checked apart from the code that chose the colours: a held-out colour and shape anywhere in the caption (any
    # word form), and the opaque outline against the grid emoji of that shape.
    outlines = {}
    for row in real:
        pair = colour_shape(row["name"])
        if pair:
            outlines[pair[1]] = np.asarray(row["image"])[..., 3] > OPAQUE
    assert set(outlines) == set(SHAPES)
    for image, name, text in zip(copies["image"], copies["name"], copies["text"]):
        colour, opaque = name.split("~")[1], np.asarray(image)[..., 3] > OPAQUE
        for held_colour, shape in HELD_OUT_PAIRS:
            if colour == held_colour:
                assert shape not in text, text
                iou = (opaque & outlines[shape]).sum() / (opaque | outlines[shape]).sum()
                assert iou < SHAPE_OVERLAP, (name, shape)
    assert not set(copies["text"]) & set(test_captions)
    # The shape rule at work: a face (a circle to the eye) is never made orange, and is made red.
    loose = recoloured_rows(real.filter(lambda n: n in ("grinning", "heart") or colour_shape(n) is not None,
                                        input_columns="name"), copies=8)
    assert "grinning~orange" not in loose["name"] and "grinning~red" in loose["name"]
    assert grid_outlines(real)["circle"].sum() == outlines["circle"].sum()


def test_copies_of_the_built_in_emoji(real, copies):
    names, texts = copies["name"], copies["text"]
    assert len(names) > 500 and len(names) == len(set(names)) == len(texts) == len(copies["image"])
    sources = [n.split("~")[0] for n in names]
    assert not any(colour_shape(n) or "skin tone" in t or t.startswith("flag") for n, t in zip(sources, texts))
    counts = np.unique(sources, return_counts=True)[1]
    # RECOLOURED_COPIES each, fewer only where the held-out rules leave fewer colours (emoji like two grid shapes)
    assert RECOLOURED_COPIES > 1 and counts.max() == RECOLOURED_COPIES and np.mean(counts == RECOLOURED_COPIES) > 0.9
    assert counts.min() >= RECOLOURED_COPIES - 1
    assert len({(source, name.split("~")[1]) for source, name in zip(sources, names)}) == len(names)  # colours differ
    references = grid_references(real)
    # Each copy's colour is the one its caption names (clipping at 0/255 may move a few off it).
    judged = [dominant_colour(image, references) == name.split("~")[1] for image, name in zip(copies["image"], names)]
    assert np.mean(judged) > 0.9
    assert all(name.split("~")[1] in text.split() for name, text in zip(names, texts))
    again = recoloured_rows(real)
    assert again["name"] == names and all(np.array_equal(np.asarray(a), np.asarray(b))
                                          for a, b in zip(again["image"][:20], copies["image"][:20]))
    assert recoloured_rows(real, seed=1)["name"] != names


def test_every_colour_and_shape_word_gets_copies(copies):
    targets = [n.split("~")[1] for n in copies["name"]]
    assert set(targets) == set(COLOURS)
    # The composition test's shape words are drawn in new colours too ("green small square", "blue broken heart"),
    # never in their held-out ones.
    colours = {shape: {n.split("~")[1] for n, t in zip(copies["name"], copies["text"]) if shape in t.split()}
               for shape in SHAPES}
    assert colours["square"] and colours["heart"]
    assert not any(colour in colours[shape] for colour, shape in HELD_OUT_PAIRS)
