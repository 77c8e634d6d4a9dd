"""Captions for the built-in Twemoji dataset (`pixelgpt/data/emoji_*.parquet`, see `pixelgpt/data/README.md`).

The source names emoji by short names (`large_blue_circle`, `wave/1F3FB`, `man-heart-man/1F3FB-1F3FC`); a
text-to-image model learns from words, so a caption is the short name spelled as words, with the skin-tone code
points spelled as the Unicode tone names. The colour x shape grid (9 colours x circle, square, heart) is also named
here, with the pairs that the training split never shows, so that a test can ask whether a model composes a colour
and a shape it has only seen apart.
"""

import re

# The five Fitzpatrick modifiers U+1F3FB..U+1F3FF, by their Unicode names, light to dark.
SKIN_TONES: tuple[str, ...] = (
    "light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone", "dark skin tone")
_TONE_BY_CODE: dict[str, str] = {f"1F3F{digit}": tone for digit, tone in zip("BCDEF", SKIN_TONES)}

# Only names whose words do not say what the picture shows: the red heart's short name has no colour (and it is the
# red cell of the colour x shape grid, so the caption must say "red"); "+1"/"-1" are no words; the five skin-tone
# swatches are called by number (skin-tone-2 is Fitzpatrick type 1-2, the lightest).
ALIASES: dict[str, str] = {
    "heart": "red heart",
    "+1": "thumbs up",
    "-1": "thumbs down",
    **{f"skin-tone-{number}": tone for number, tone in enumerate(SKIN_TONES, start=2)},
}

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "heart")

# Never in the training split (every image of these pairs goes to the test split): one held-out pair per colour
# at most, and each shape held out for at least one colour, so every colour and every shape is still trained.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("purple", "square"), ("green", "heart"), ("orange", "circle"), ("yellow", "square"), ("brown", "heart"))

# The grid's short names are irregular: `red_circle` but `large_blue_circle`, `large_red_square` but
# `black_large_square`, `blue_heart` but `heart` for red. "large" may stand on either side of the colour; a longer
# modifier (`light_blue_heart`, `black_small_square`, `black_square_button`) is some other emoji and does not match.
_GRID_NAME = re.compile(rf"(?:large_)?({'|'.join(COLOURS)})_(?:large_)?({'|'.join(SHAPES)})")


def _tones(codes: str) -> str:
    """`1F3FB` -> "light skin tone"; `1F3FC-1F3FF` (two people) -> "medium-light skin tone and dark skin tone";
    two equal codes say the tone once, as Unicode names those sequences ("..., light skin tone")."""
    parts = codes.upper().split("-")
    if any(part not in _TONE_BY_CODE for part in parts):
        raise ValueError(f"not a skin-tone suffix: {codes!r} (expected 1F3FB..1F3FF, or two joined by '-')")
    tones = list(dict.fromkeys(_TONE_BY_CODE[part] for part in parts))
    return " and ".join(tones)


def emoji_caption(name: str) -> str:
    """The caption of the emoji with short name `name`: its words in lower case (`_` and `-` become spaces), an alias
    where the words say too little (`heart` -> "red heart", `+1` -> "thumbs up"), "<colour> <shape>" for the colour
    x shape grid (`large_blue_circle` -> "blue circle", `black_large_square` -> "black square"), and a skin-tone
    suffix spelled out (`wave/1F3FB` -> "wave light skin tone")."""
    base, _, codes = name.partition("/")
    grid = colour_shape(base)  # the grid's irregular names all read "<colour> <shape>": "blue circle"
    words = ALIASES.get(base) or (" ".join(grid) if grid else None) or " ".join(
        re.split(r"[_\-\s]+", base.strip("_- "))).lower()
    if not words:
        raise ValueError(f"no words in emoji name {name!r}")
    return f"{words} {_tones(codes)}" if codes else words


def colour_shape(name: str) -> tuple[str, str] | None:
    """(colour, shape) when `name` is one of the 27 emoji of the colour x shape grid (`large_blue_circle` ->
    ("blue", "circle"), `heart` -> ("red", "heart")), else None."""
    if name == "heart":
        return ("red", "heart")
    match = _GRID_NAME.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None
