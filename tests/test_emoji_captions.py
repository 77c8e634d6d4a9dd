"""pixelgpt.emoji_captions: captions of emoji short names, and the colour x shape grid as the shipped data has it."""

import numpy as np
import pytest

from pixelgpt.emoji_captions import (
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SKIN_TONES,
    colour_shape,
    emoji_caption,
)


@pytest.fixture(scope="module")
def emoji():
    from pixelgpt.default_data import load_emoji_dataset

    return load_emoji_dataset(grid_repeats=1, recoloured_copies=0)  # each emoji once


@pytest.mark.parametrize("name, caption", [
    ("large_blue_circle", "blue circle"), ("black_large_square", "black square"), ("red_circle", "red circle"),
    ("purple_heart", "purple heart"),
    ("heart", "red heart"),
    ("wave", "wave"),
    ("wave/1F3FB", "wave light skin tone"),
    ("wave/1F3FF", "wave dark skin tone"),
    ("+1", "thumbs up"),
    ("+1/1F3FD", "thumbs up medium skin tone"),
    ("-1/1F3FE", "thumbs down medium-dark skin tone"),
    ("man-heart-man/1F3FC-1F3FF", "man heart man medium-light skin tone and dark skin tone"),
    ("man-heart-man/1F3FB-1F3FB", "man heart man light skin tone"),  # one tone for both: said once, as Unicode does
    ("flag-ac", "flag ac"),
    ("skin-tone-2", "light skin tone"),
    ("skin-tone-6", "dark skin tone"),
    ("smiling_face_with_3_hearts", "smiling face with 3 hearts"),
])
def test_caption_spells_the_short_name_as_words(name, caption):
    assert emoji_caption(name) == caption


@pytest.mark.parametrize("name", ["wave/1F600", "wave/1F3FB-", "", "_"])
def test_caption_refuses_what_is_no_emoji_name(name):
    with pytest.raises(ValueError):
        emoji_caption(name)


def test_constants():
    assert SKIN_TONES == ("light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone",
                          "dark skin tone")
    assert len(COLOURS) == 9 and SHAPES == ("circle", "square", "heart")
    assert set(HELD_OUT_PAIRS) == {("purple", "square"), ("green", "heart"), ("orange", "circle"),
                                   ("yellow", "square"), ("brown", "heart")}
    # every colour and every shape stays in training with some other partner
    assert {c for c, _ in HELD_OUT_PAIRS} < set(COLOURS) and {s for _, s in HELD_OUT_PAIRS} == set(SHAPES)


@pytest.mark.parametrize("name, pair", [
    ("heart", ("red", "heart")), ("red_circle", ("red", "circle")), ("large_blue_circle", ("blue", "circle")),
    ("large_red_square", ("red", "square")), ("black_large_square", ("black", "square")),
    ("white_large_square", ("white", "square")), ("purple_heart", ("purple", "heart")),
    ("light_blue_heart", None), ("black_square_button", None), ("black_small_square", None),
    ("white_medium_square", None), ("black_medium_small_square", None), ("large_blue_diamond", None),
    ("black_circle_for_record", None), ("wave", None), ("heart/1F3FB", None),
])
def test_colour_shape_names_only_the_grid(name, pair):
    assert colour_shape(name) == pair


def test_the_shipped_data_has_all_27_grid_emoji_once_each(emoji):
    names = list(emoji["train"]["name"]) + list(emoji["test"]["name"])
    pairs = [colour_shape(name) for name in names if colour_shape(name)]
    assert sorted(pairs) == sorted((c, s) for c in COLOURS for s in SHAPES)


def grid_pixels(emoji) -> dict[tuple[str, str], np.ndarray]:
    rows = [row for split in ("train", "test") for row in emoji[split] if colour_shape(row["name"])]
    return {colour_shape(row["name"]): np.asarray(row["image"]) for row in rows}


# What each colour word means, loosely, for the median of an emoji's opaque pixels (r, g, b in 0..255).
COLOUR_CHECKS = {
    "red": lambda r, g, b: r > 180 and g < 90 and b < 90,
    "orange": lambda r, g, b: r > 200 and 0.45 * r < g < 0.7 * r and b < 60,
    "yellow": lambda r, g, b: r > 200 and g > 0.75 * r and b < 0.5 * g,
    "green": lambda r, g, b: g > r + 30 and g > b + 30,
    "blue": lambda r, g, b: b > g > r + 40,
    "purple": lambda r, g, b: b > r > g,
    "brown": lambda r, g, b: 120 < r < 210 and r > g + 50 > b + 50 and r + g + b < 450,
    "black": lambda r, g, b: max(r, g, b) < 80,
    "white": lambda r, g, b: min(r, g, b) > 200,
}


def test_grid_emoji_show_their_colour_and_shape(emoji):
    """The names say what the pixels show: a fill colour that reads as that colour word and as no other, and the
    shape in how much of its bounding box it fills (square ~1, circle ~pi/4, heart less)."""
    for (colour, shape), image in grid_pixels(emoji).items():
        assert image.shape == (64, 64, 4)
        opaque = image[..., 3] > 127
        r, g, b = np.median(image[..., :3][opaque], axis=0)
        assert [word for word, check in COLOUR_CHECKS.items() if check(r, g, b)] == [colour], (shape, (r, g, b))
        ys, xs = np.nonzero(opaque)
        fill = opaque.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        expected = {"square": (0.95, 1.0), "circle": (0.76, 0.82), "heart": (0.6, 0.76)}[shape]
        assert expected[0] < fill <= expected[1], (colour, shape, fill)


def test_held_out_pairs_are_only_in_the_test_split(emoji):
    train = {colour_shape(n) for n in emoji["train"]["name"]} - {None}
    test = {colour_shape(n) for n in emoji["test"]["name"]} - {None}
    assert test == set(HELD_OUT_PAIRS)
    assert train == {(c, s) for c in COLOURS for s in SHAPES} - set(HELD_OUT_PAIRS)  # the other 22, all trained
