"""Recoloured copies of the built-in emoji, captioned with their new colour, so that a colour word is learnt apart from
the shapes it comes with.

Why: in Twemoji a shape's colour is mostly fixed (hands and faces are yellow, leaves green), so a caption's colour
word tells a model little it could not guess from the other words, and "purple square" (never seen) is drawn as
some square, or some purple thing. A copy of the apple in blue captioned "blue apple" can only be drawn right by
reading "blue". Captioning every emoji with the colour it already had did not help (docs/text.md); recolouring is
what makes the word carry the colour. As for any augmentation, the copies are not real emoji. The composition test
still asks for pairs never seen: no copy puts a held-out pair's colour (`HELD_OUT_PAIRS`) in a caption beside its
shape's word, nor onto an emoji shaped like that shape (an orange face is an orange circle to the eye, whatever its
caption: its outline overlaps the grid circle's by SHAPE_OVERLAP or more), and no copy's caption is a test caption.

How: the nine colours' reference RGBs are the mean opaque pixel of the training split's colour x shape emoji of each
colour. An emoji takes part when at least `DOMINANT_SHARE` of its opaque pixels lie within `NEAR` of one reference
(its colour) and its caption is not a flag, a skin tone or a grid emoji (those colours mean something). Its copy
moves every opaque pixel whose nearest reference is that colour by the difference of the two references (shading
and outlines of the colour move with it; other colours stay), and its caption names the new colour: the old colour
word replaced, or the new one put first ("apple" -> "blue apple").
"""

import re

import numpy as np
from PIL import Image

from .emoji_captions import COLOURS, HELD_OUT_PAIRS, colour_shape

# Copies per emoji that takes part, each in another colour (drawn with a seeded generator). Four carried the colour
# words to the held-out pairs far better than two, at a small cost in held-out loss (docs/text.md#copies-per-emoji).
RECOLOURED_COPIES = 4
# An emoji takes part when this share of its opaque pixels is within NEAR (RGB distance) of one colour's reference.
DOMINANT_SHARE, NEAR = 0.6, 40.0
# An emoji whose opaque outline overlaps a grid shape's this much (intersection over union) counts as that shape.
SHAPE_OVERLAP = 0.7
OPAQUE = 200  # alpha above this is the emoji, not its anti-aliased edge
_SKIPPED = re.compile(r"\bflag\b|skin tone")


def _grid(rows):
    """(colour, shape, `(H, W, 4)` RGBA pixels) of each colour x shape emoji of `rows` (dicts with `name` and an
    RGBA `image`)."""
    for row in rows:
        pair = colour_shape(row["name"])
        if pair:
            yield (*pair, np.asarray(row["image"].convert("RGBA")))


def grid_references(rows) -> dict[str, np.ndarray]:
    """Each colour's reference RGB: the mean opaque pixel of the colour x shape emoji of that colour in `rows`."""
    pixels: dict[str, list] = {c: [] for c in COLOURS}
    for colour, _, rgba in _grid(rows):
        pixels[colour].append(rgba[rgba[..., 3] > OPAQUE][:, :3].astype(np.float64))
    missing = [c for c, p in pixels.items() if not p]
    if missing:
        raise ValueError(f"grid_references: no colour x shape emoji of {missing}")
    return {c: np.concatenate(p).mean(0) for c, p in pixels.items()}


def grid_outlines(rows) -> dict[str, np.ndarray]:
    """Each shape's outline: the opaque pixels `(H, W)` of the colour x shape emoji of that shape in `rows` (all
    colours of a shape share one outline in Twemoji; their union is taken)."""
    outlines: dict[str, np.ndarray] = {}
    for _, shape, rgba in _grid(rows):
        opaque = rgba[..., 3] > OPAQUE
        outlines[shape] = outlines.get(shape, opaque) | opaque
    return outlines


def iou(mask: np.ndarray, outline: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one size (0 when both are empty)."""
    union = (mask | outline).sum()
    return float((mask & outline).sum() / union) if union else 0.0


def overlap(image: Image.Image, outline: np.ndarray) -> float:
    """Intersection over union of the image's opaque pixels and `outline`."""
    return iou(np.asarray(image.convert("RGBA"))[..., 3] > OPAQUE, outline)


def dominant_colour(image: Image.Image, references: dict[str, np.ndarray]) -> str | None:
    """The colour of `references` that at least DOMINANT_SHARE of the image's opaque pixels are within NEAR of,
    else None."""
    rgba = np.asarray(image.convert("RGBA"))
    pixels = rgba[rgba[..., 3] > OPAQUE][:, :3].astype(np.float64)
    if len(pixels) == 0:
        return None
    distance = np.linalg.norm(pixels[:, None] - np.stack(list(references.values()))[None], axis=2)  # (N, colours)
    near = distance.min(1) <= NEAR
    share = np.bincount(distance.argmin(1)[near], minlength=len(references)) / len(pixels)
    return list(references)[int(share.argmax())] if share.max() >= DOMINANT_SHARE else None


def recolour(image: Image.Image, source: str, target: str, references: dict[str, np.ndarray]) -> Image.Image:
    """The image with every visible pixel (alpha > 0, anti-aliased edges included) whose nearest reference is
    `source` moved by `target`'s reference minus `source`'s (clipped to 0..255); alpha and the other colours stay."""
    rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
    table = np.stack(list(references.values()))
    nearest = np.linalg.norm(rgba[..., None, :3] - table, axis=-1).argmin(-1)  # (H, W)
    mine = (nearest == list(references).index(source)) & (rgba[..., 3] > 0)
    rgba[mine, :3] += references[target] - references[source]
    return Image.fromarray(np.clip(np.rint(rgba), 0, 255).astype(np.uint8), "RGBA")


def recoloured_caption(caption: str, source: str, target: str) -> str:
    """`caption` with its word `source` replaced by `target`, or `target` put first when it has none."""
    words = caption.split()
    return " ".join(target if w == source else w for w in words) if source in words else f"{target} {caption}"


def writes_held_out_pair(caption: str) -> bool:
    """Whether `caption` holds a held-out pair's colour and a word starting with its shape ("green hearts")."""
    words = caption.split()
    return any(colour in words and any(w.startswith(shape) for w in words) for colour, shape in HELD_OUT_PAIRS)


def recoloured_rows(rows, copies: int = RECOLOURED_COPIES, seed: int = 0, avoid=()) -> dict[str, list]:
    """Recoloured copies of the emoji of `rows` (dicts with `image`, `text`, `name`, `label`) that take part, as
    columns: `copies` per emoji (fewer where fewer colours are allowed), each in another colour drawn at random
    (`seed`) among those that make no held-out pair (in the caption or by the emoji's shape) and no caption of `avoid`
    (e.g. the test captions). Names are `<name>~<colour>`."""
    rows, avoid = list(rows), set(avoid)
    references, outlines, rng = grid_references(rows), grid_outlines(rows), np.random.default_rng(seed)
    out: dict[str, list] = {"image": [], "text": [], "name": [], "label": []}
    for row in rows:
        if colour_shape(row["name"]) or _SKIPPED.search(row["text"]):
            continue
        source = dominant_colour(row["image"], references)
        if source is None:
            continue
        captions = {c: recoloured_caption(row["text"], source, c) for c in COLOURS if c != source}
        shaped = {colour for colour, shape in HELD_OUT_PAIRS if overlap(row["image"], outlines[shape]) >= SHAPE_OVERLAP}
        allowed = [c for c, text in captions.items()
                   if not writes_held_out_pair(text) and c not in shaped and text not in avoid]
        for target in rng.choice(allowed, size=min(copies, len(allowed)), replace=False):
            out["image"].append(recolour(row["image"], source, target, references))
            out["text"].append(captions[target])
            out["name"].append(f"{row['name']}~{target}")
            out["label"].append(row["label"])
    return out
