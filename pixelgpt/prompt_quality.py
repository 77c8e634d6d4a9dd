"""Does a text-prompted model draw what its prompt says? Four figures on the emoji set that need no download, three
of them also with the prompt's colour or tone stressed.

1. Colour words: every colour x shape prompt of the training split ("large blue circle"), `num_samples` samples
   each; a sample's colour is its mean foreground RGB assigned to the nearest named colour's reference (measured
   the same way from the real training images of that colour, `colour_references`). Figure: the share of samples
   of the colour named. Chance 1/9. Beside it the shape: a sample's shape is the grid shape whose outline (the
   union of the real images' foregrounds, each cropped to its bounding box: `shape_outlines`) its own foreground,
   cropped the same way, overlaps most; the share of samples of the shape named (chance 1/3) and of both colour
   and shape (1/27).
2. Composition: the same on the colour x shape pairs never trained on (`HELD_OUT_PAIRS`), per pair and overall.
3. Skin tones: for several people, the five tone prompts; a sample's skin is its pixels near one of the five skin
   references (the real `skin-tone-2..6` swatches), summarised by their mean luma. Figure: the share of tone pairs
   (i lighter than j by name) whose mean sample luma is in that order. Chance 50%.
4. Prompt fidelity: one or more samples per held-out (test split) caption; all test images ranked by their distance
   to the sample in `FEATURES_NAME`; top-k: the caption's own image is among the k nearest. Chance k/N.
5. Stressed: figures 1-3 again, each prompt guided from itself without its colour or skin-tone words
   (`without_attributes`) at STRESS_GUIDANCE and STRESS_TEMPERATURE.

Each figure stands beside its chance level, the same figure for an untrained model of the same configuration
(`quality.untrained_copy`) and the ceiling: the real images measured as if they were samples (the retrieval ceiling
uses shifted, noisy copies of the test images, `jittered`). `measure_prompts` draws the samples and returns a
JSON-ready report; `markdown` writes it as a table. `examples/prompt_quality.py` is its command line.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from pixelgpt.emoji_captions import COLOURS, HELD_OUT_PAIRS, SHAPES, SKIN_TONES, colour_shape
from pixelgpt.emoji_recolour import iou
from pixelgpt.quality import quantized, untrained_copy

# The colour transparent pixels are composited over, as the image processor does (its `background` default).
# The guidance a text model draws with by default (training grids, the judgement at the end of a run, the demo):
# on the built-in emoji, 1 to 1.5 gave the most colour words right and the best retrieval, 2 fewer, 3 far fewer
# (guidance 3 turned flat colour fields to speckle: docs/text.md#guidance).
PROMPT_GUIDANCE = 1.5
# Stressing a word: guidance from the prompt without it ("square") instead of from the empty prompt amplifies what
# that word changes, not the whole prompt. A colour never trained on a shape ("purple square") is otherwise drawn in
# a colour that shape was trained in; guided from its shape alone, the colour word decides
# (docs/text.md#stressing-a-word). Stressed, the colour and skin-tone figures are measured again, each prompt guided
# from itself without its colour or tone words, at this guidance and temperature (the best of guidance 1.5, 3 and 4
# at temperature 1, and 3 and 4 at temperature 0.7, on the built-in emoji: docs/text.md).
STRESS_GUIDANCE, STRESS_TEMPERATURE = 4.0, 0.7
STRESSED = ("colour_words", "composition", "skin_tones")  # the figures measured again stressed
BACKGROUND = (255, 255, 255)
# A pixel farther than this (Euclidean RGB, 0-255) from the background is foreground. Twemoji's "white" fill,
# (230, 231, 232), sits 40 away; anti-aliased edges that are mostly background fall below.
FOREGROUND_DISTANCE = 24.0
# A skin pixel is within this of its nearest skin reference; neighbouring Twemoji tones are 46 to 77 apart.
SKIN_DISTANCE = 30.0
# Fewer foreground (skin) pixels than this share of the image: the sample has no colour (skin) to judge.
MIN_PIXEL_SHARE = 0.005
# Twemoji's five modifiers, light to dark, as the emoji names carry them ("wave/1F3FB"), and the tone swatches.
TONE_CODES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
SKIN_SWATCHES = tuple(f"skin-tone-{i}" for i in range(2, 7))
# People measured first when present (all five tones drawn by each); others fill up to `num_people`.
PEOPLE = ("wave", "+1", "raised_hands", "clap", "ok_hand", "man", "woman", "boy", "girl", "baby")
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601: the lightness of a skin pixel
PALETTE_WEIGHT = 0.5  # of the foreground colour histogram beside the 8x8 thumbnail (see `features`)
FEATURES_NAME = "8x8 RGB thumbnail over white + 0.5 x sqrt foreground colour histogram (4x4x4 bins), L2"
TOP_K = (1, 5)
OUTLINE_SIZE = 32  # side of the frame shapes are compared in (`_framed`)


def rgb_pixels(image) -> np.ndarray:
    """A PIL image as `(H, W, 3)` float64 RGB in 0-255, transparency composited over `BACKGROUND`."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        canvas = Image.new("RGB", image.size, BACKGROUND)
        rgba = image.convert("RGBA")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        image = canvas
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def foreground(pixels: np.ndarray) -> np.ndarray:
    """`(H, W)` bool of `rgb_pixels` `(H, W, 3)`: the pixels not near the background."""
    return np.linalg.norm(pixels - np.array(BACKGROUND), axis=-1) > FOREGROUND_DISTANCE


def mean_foreground(image) -> np.ndarray | None:
    """Mean RGB of the pixels not near the background, or None when fewer than `MIN_PIXEL_SHARE` of them are."""
    pixels = rgb_pixels(image)
    mask = foreground(pixels)
    if mask.mean() < MIN_PIXEL_SHARE:
        return None
    return pixels[mask].mean(0)


def colour_references(images_by_colour: Mapping[str, Sequence]) -> dict[str, list[float]]:
    """Each colour's reference RGB: the mean of `mean_foreground` over the real images of that colour.

    Why the mean of the foreground: a colour x shape emoji is one flat fill on a transparent background, so the mean
    of its non-background pixels is that fill (pulled slightly by the anti-aliased edge), whatever the shape; a
    sample is summarised the same way, so the same edge pull is in both. The mean also averages out the per-pixel
    noise of a sample, where the most frequent colour or a cluster would follow a few stray pixels. Measured rather
    than taken from a colour chart: Twemoji's purple is (170, 142, 214), its white a light gray."""
    references = {}
    for colour, images in images_by_colour.items():
        means = [m for m in map(mean_foreground, images) if m is not None]
        if not means:
            raise ValueError(f"colour_references: no image of {colour!r} has a foreground.")
        references[colour] = [float(v) for v in np.mean(means, 0)]
    return references


def nearest_colour(image, references: Mapping[str, Sequence[float]]) -> str | None:
    """The colour of `references` nearest the image's mean foreground RGB (None when it has no foreground)."""
    mean = mean_foreground(image)
    if mean is None:
        return None
    names = list(references)
    return names[int(np.linalg.norm(np.array([references[n] for n in names]) - mean, axis=1).argmin())]


def _framed(mask: np.ndarray) -> np.ndarray:
    """`mask` cropped to its bounding box and resized to OUTLINE_SIZE x OUTLINE_SIZE: its shape, whatever its size
    and place (a small square in a corner is a square)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = Image.fromarray(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8) * 255)
    return np.asarray(box.resize((OUTLINE_SIZE, OUTLINE_SIZE), Image.Resampling.BILINEAR)) >= 128


def shape_outlines(images_by_shape: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    """Each shape's outline `(OUTLINE_SIZE, OUTLINE_SIZE)` bool: the union of the framed foregrounds (`_framed`) of
    the real images of that shape that have one (in Twemoji every colour of a shape has the same outline)."""
    outlines = {}
    for shape, images in images_by_shape.items():
        masks = [m for m in (foreground(rgb_pixels(image)) for image in images) if m.mean() >= MIN_PIXEL_SHARE]
        if not masks:
            raise ValueError(f"shape_outlines: no image of {shape!r} has a foreground.")
        outlines[shape] = np.logical_or.reduce([_framed(mask) for mask in masks])
    return outlines


def nearest_shape(image, outlines: Mapping[str, np.ndarray]) -> str | None:
    """The shape whose outline the image's framed foreground overlaps most (intersection over union), or None when
    fewer than `MIN_PIXEL_SHARE` of its pixels are foreground."""
    mask = foreground(rgb_pixels(image))
    if mask.mean() < MIN_PIXEL_SHARE:
        return None
    mask = _framed(mask)
    overlaps = {shape: iou(mask, outline) for shape, outline in outlines.items()}
    return max(overlaps, key=overlaps.get)


def _shares(hits: Sequence[bool], keys: Sequence[str]) -> tuple[float | None, dict[str, float]]:
    """The share of true `hits`, overall and per key."""
    grouped = defaultdict(list)
    for key, hit in zip(keys, hits, strict=True):
        grouped[key].append(hit)
    return (float(np.mean(hits)) if len(hits) else None), {k: float(np.mean(v)) for k, v in grouped.items()}


def colour_accuracy(images, colours: Sequence[str], references, groups: Sequence[str] | None = None,
                    shapes: Sequence[str] | None = None, outlines: Mapping[str, np.ndarray] | None = None) -> dict:
    """The share of `images` judged (`nearest_colour`) the colour named for each, overall and per colour (or per
    `groups` entry, e.g. "purple square"), with how many images had no foreground (judged wrong). With the
    `shapes` named and their `outlines`: also the share judged that shape (`nearest_shape`) and the share right in
    both, overall (`shape_accuracy`, `colour_and_shape_accuracy`) and per group (`per_group_colour_and_shape`)."""
    judged = [nearest_colour(image, references) for image in images]
    keys = groups if groups is not None else colours
    colour_hits = [seen == colour for colour, seen in zip(colours, judged, strict=True)]
    accuracy, per_group = _shares(colour_hits, keys)
    report = {"accuracy": accuracy, "num_images": len(colour_hits), "no_foreground": judged.count(None),
              "per_group": per_group}
    if shapes is not None:
        shape_hits = [nearest_shape(image, outlines) == shape for image, shape in zip(images, shapes, strict=True)]
        both, per_group_both = _shares([a and b for a, b in zip(colour_hits, shape_hits)], keys)
        report.update(shape_accuracy=_shares(shape_hits, keys)[0], colour_and_shape_accuracy=both,
                      per_group_colour_and_shape=per_group_both)
    return report


def skin_lightness(image, references, threshold: float = SKIN_DISTANCE) -> float | None:
    """Mean luma (0-255) of the image's skin pixels: those within `threshold` of their nearest skin reference
    (`references`, (5, 3) RGB). None when fewer than `MIN_PIXEL_SHARE` of the pixels are skin."""
    pixels = rgb_pixels(image).reshape(-1, 3)
    distance = np.linalg.norm(pixels[:, None] - np.asarray(references, dtype=np.float64)[None], axis=2).min(1)
    skin = distance <= threshold
    if skin.mean() < MIN_PIXEL_SHARE:
        return None
    return float(pixels[skin].mean(0) @ LUMA)


def tone_order(lightness: Mapping[str, Sequence[Sequence[float | None]]]) -> dict:
    """`lightness[person][t]`: the skin lightness of each sample of tone t (light to dark). For each person and
    each tone pair i < j (i lighter by name): in order when the mean lightness of i's samples is higher than j's.
    A pair with a tie, or a tone without any skin pixels, is undecided and counts half (chance stays 50%)."""
    score, pairs, undecided, per_person = 0.0, 0, 0, {}
    for person, tones in lightness.items():
        means = [np.mean([v for v in values if v is not None]) if any(v is not None for v in values) else None
                 for values in tones]
        mine = 0.0
        for i in range(len(means)):
            for j in range(i + 1, len(means)):
                pairs += 1
                if means[i] is None or means[j] is None or means[i] == means[j]:
                    undecided, mine = undecided + 1, mine + 0.5
                else:
                    mine += float(means[i] > means[j])
        score += mine
        per_person[person] = mine / (len(means) * (len(means) - 1) / 2)
    return {"in_order_share": score / pairs if pairs else None, "pairs": pairs, "undecided_pairs": undecided,
            "per_person": per_person}


def features(images) -> torch.Tensor:
    """The retrieval features (`FEATURES_NAME`), `(N, 3 * 8 * 8 + 64)` float32; L2 between rows compares images.

    Layout: each image over white, box-filtered to an 8x8 RGB thumbnail (0-1, divided by 8, so that its L2 is the
    root-mean-square RGB distance over the 64 cells). Palette: the square roots of the shares of its foreground
    pixels in 4x4x4 RGB bins (their L2 is the Hellinger distance, times sqrt 2), weighed by 0.5. Why: a sample is a
    new drawing, never a copy; the thumbnail keeps where each colour is and forgets detail a few pixels off, the
    histogram keeps which colours are drawn whatever their place and size. On shifted, noisy or shrunk copies of
    400 real emoji among each other, this beat 8x8, 16x16 or 32x32 thumbnails alone (top-1 of copies shrunk to 80%
    and shifted: 74% against 15%, 9%; shifted by up to 4 pixels: 96% against 96%, 93%, 87%)."""
    rows = []
    for image in images:
        pixels = rgb_pixels(image)
        layout = np.asarray(Image.fromarray(pixels.round().astype(np.uint8)).resize((8, 8), Image.Resampling.BOX))
        flat = pixels.reshape(-1, 3)
        foreground = np.linalg.norm(flat - np.array(BACKGROUND), axis=1) > FOREGROUND_DISTANCE
        chosen = flat[foreground] if foreground.any() else flat
        bins = np.minimum(chosen // 64, 3).astype(int) @ np.array([16, 4, 1])
        palette = np.sqrt(np.bincount(bins, minlength=64) / len(bins))
        rows.append(np.concatenate([layout.reshape(-1) / 255 / 8, PALETTE_WEIGHT * palette]))
    return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, 256))).float()


def retrieval(queries, targets: Sequence[int], gallery, keys: Sequence | None = None, ks=TOP_K) -> dict:
    """Top-k retrieval of `gallery[targets[q]]` from `queries[q]`, ranking the gallery by L2 distance between
    `features`. With `keys` (e.g. the gallery's captions), any gallery image with its target's key is a hit
    (ties of equal captions). The median rank is of the first hit (1 = nearest)."""
    query, reference = features(queries), features(gallery)
    distance = torch.cdist(query.double(), reference.double())  # (Q, N)
    keys = list(range(len(gallery))) if keys is None else list(keys)
    hit = torch.tensor([[keys[g] == keys[t] for g in range(len(gallery))] for t in targets])
    # rank of the first hit: gallery images strictly nearer than the nearest hit, plus one
    nearest_hit = distance.masked_fill(~hit, float("inf")).min(1).values
    ranks = (distance < nearest_hit[:, None]).sum(1) + 1
    report = {f"top_{k}": float((ranks <= k).double().mean()) for k in ks}
    report["median_rank"] = float(ranks.double().median())
    return report


def jittered(images, seed: int, shift: int | None = None, noise: float = 8.0) -> list:
    """Copies of `images` (over white) shifted by up to `shift` pixels each way (white fill; default: 1/32 of the
    side, 2 pixels at 64) with Gaussian per-channel noise of `noise` (0-255): stand-ins for near-perfect samples,
    the retrieval ceiling."""
    rng, copies = np.random.default_rng(seed), []
    for image in images:
        pixels = rgb_pixels(image)
        most = max(pixels.shape[:2]) // 32 if shift is None else shift
        dx, dy = rng.integers(-most, most + 1, size=2)
        moved = np.full_like(pixels, 255.0)
        h, w = pixels.shape[:2]
        moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = pixels[max(-dy, 0):h + min(-dy, 0),
                                                                              max(-dx, 0):w + min(-dx, 0)]
        moved += rng.normal(0, noise, moved.shape)
        copies.append(Image.fromarray(moved.clip(0, 255).round().astype(np.uint8)))
    return copies


def chance(num_colours: int = len(COLOURS), num_gallery: int | None = None, num_shapes: int = len(SHAPES)) -> dict:
    """The chance levels: a colour (and a shape) drawn at random, a coin per tone pair, a random ranking of the
    gallery."""
    drawn = {"accuracy": 1 / num_colours, "shape_accuracy": 1 / num_shapes,
             "colour_and_shape_accuracy": 1 / (num_colours * num_shapes)}
    levels = {"colour_words": drawn, "composition": dict(drawn), "skin_tones": 0.5}
    if num_gallery:
        levels["retrieval"] = {f"top_{k}": min(k, num_gallery) / num_gallery for k in TOP_K}
    return levels


# ------------------------------------------------------------------------------------------------------- the driver
def _rows(split, keep) -> tuple[list, list, list]:
    """(indices, names, texts) of the rows of `split` whose name `keep(name)` accepts, each name once (the built-in
    training split repeats its colour x shape emoji)."""
    names, texts = split["name"], split["text"]
    first = {name: i for i, name in reversed(list(enumerate(names)))}
    chosen = [i for i, name in enumerate(names) if keep(name) and first[name] == i]
    return chosen, [names[i] for i in chosen], [texts[i] for i in chosen]


def _images(split, indices, see) -> list:
    return see([split[int(i)]["image"] for i in indices]) if len(indices) else []


def _keep(part: dict, keep: list) -> dict:
    """`part` with only the entries of its lists where `keep` is true."""
    return {key: [v for v, k in zip(values, keep, strict=True) if k] for key, values in part.items()}


def _people(train, num_people: int) -> list[str]:
    """Base names whose five single-tone variants are all in the training split: `PEOPLE` first, then in order."""
    tones = defaultdict(set)
    for name in train["name"]:
        base, _, code = name.partition("/")
        if code in TONE_CODES:
            tones[base].add(code)
    complete = [base for base, codes in tones.items() if len(codes) == len(TONE_CODES)]
    ordered = [p for p in PEOPLE if p in complete] + sorted(p for p in complete if p not in PEOPLE)
    return ordered[:num_people]


def prompt_sets(dataset, num_people: int = 6, see=lambda images: images, fits=lambda caption: True) -> dict:
    """What the four figures ask for and compare with, from a DatasetDict of train/test splits with columns
    `image`, `text` and `name`: the prompts with their expected answers, and the real images (through `see`, e.g.
    the model's quantization) for the references and the ceilings. Retrieval asks for the test captions that
    `fits` accepts (those the model can read) and ranks every test image."""
    train, test = dataset["train"], dataset["test"]
    grid = lambda name: colour_shape(name) is not None and colour_shape(name) not in HELD_OUT_PAIRS  # noqa: E731
    idx, names, texts = _rows(train, grid)
    trained = {"prompts": texts, "colours": [colour_shape(n)[0] for n in names],
               "shapes": [colour_shape(n)[1] for n in names], "images": _images(train, idx, see)}
    by_colour = defaultdict(list)
    for colour, image in zip(trained["colours"], trained["images"], strict=True):
        by_colour[colour].append(image)
    idx, names, texts = _rows(test, lambda name: colour_shape(name) in HELD_OUT_PAIRS)
    held_out = {"prompts": texts, "colours": [colour_shape(n)[0] for n in names],
                "shapes": [colour_shape(n)[1] for n in names],
                "pairs": [" ".join(colour_shape(n)) for n in names], "images": _images(test, idx, see)}
    # A colour the model's quantization turns into background (white at 4 levels per channel) cannot be judged.
    judged = {c for c, images in by_colour.items() if any(mean_foreground(i) is not None for i in images)}
    trained, held_out = (_keep(part, [c in judged for c in part["colours"]]) for part in (trained, held_out))
    people = _people(train, num_people)
    variants = {f"{p}/{code}": None for p in people for code in TONE_CODES}
    idx, names, texts = _rows(train, lambda name: name in variants)
    by_name = dict(zip(names, zip(texts, _images(train, idx, see), strict=True), strict=True))
    skin = {"people": people, "prompts": [by_name[f"{p}/{c}"][0] for p in people for c in TONE_CODES],
            "images": [by_name[f"{p}/{c}"][1] for p in people for c in TONE_CODES]}
    swatches = []
    for split in (train, test):
        idx, names, _ = _rows(split, lambda name: name in SKIN_SWATCHES)
        swatches += list(zip(names, _images(split, idx, see)))
    if sorted(n for n, _ in swatches) != list(SKIN_SWATCHES):
        raise ValueError(f"prompt_sets: the data needs the five skin-tone swatches {SKIN_SWATCHES} once each.")
    skin["references"] = [mean_foreground(image) for _, image in sorted(swatches, key=lambda s: s[0])]
    if any(rgb is None for rgb in skin["references"]):
        raise ValueError("prompt_sets: a skin-tone swatch is all background as the model sees it.")
    skin["references"] = [list(rgb) for rgb in skin["references"]]
    if not len(test):
        raise ValueError("prompt_sets: the test split is empty; retrieval ranks its images.")
    gallery = {"prompts": list(test["text"]), "images": see(list(test["image"]))}
    gallery["queries"] = [i for i, caption in enumerate(gallery["prompts"]) if fits(caption)]
    by_shape = defaultdict(list)
    for shape, image in zip(trained["shapes"], trained["images"], strict=True):
        by_shape[shape].append(image)
    return {"colour_references": colour_references({c: by_colour[c] for c in sorted(judged)}),
            "shape_outlines": shape_outlines(by_shape),
            "unjudged_colours": sorted(set(by_colour) - judged), "colour_words": trained,
            "composition": held_out, "skin_tones": skin, "retrieval": gallery}


def without_attributes(prompt: str) -> str:
    """The prompt without its colour words and skin tones ("purple square" -> "square", "wave medium-light skin
    tone" -> "wave"): what a stressed prompt is guided from."""
    for tone in sorted(SKIN_TONES, key=len, reverse=True):  # "light skin tone" is in "medium-light skin tone"
        prompt = prompt.replace(f" and {tone}", " ").replace(tone, " ")  # two people: "... and dark skin tone"
    return " ".join(w for w in prompt.split() if w not in COLOURS)


def _figures(sets: dict, samples: dict, n: int, repeats: int) -> dict:
    """The figures of `samples` (per set: the images in the order of the set's prompts, `n` per prompt; the
    retrieval set `repeats` per prompt), and those of the `<set>_stressed` samples when there are some."""
    refs, words, held, skin = sets["colour_references"], sets["colour_words"], sets["composition"], sets["skin_tones"]
    rep = lambda values, k: [v for v in values for _ in range(k)]  # noqa: E731

    def tones(images):
        lightness = [skin_lightness(image, skin["references"]) for image in images]
        per_prompt = [lightness[i * n:(i + 1) * n] for i in range(len(skin["prompts"]))]
        k = len(TONE_CODES)
        return tone_order({p: per_prompt[i * k:(i + 1) * k] for i, p in enumerate(skin["people"])})

    outlines = sets["shape_outlines"]
    judge = {"colour_words": lambda images: colour_accuracy(images, rep(words["colours"], n), refs,
                                                            shapes=rep(words["shapes"], n), outlines=outlines),
             "composition": lambda images: colour_accuracy(images, rep(held["colours"], n), refs,
                                                           rep(held["pairs"], n), rep(held["shapes"], n), outlines),
             "skin_tones": tones}
    gallery = sets["retrieval"]
    figures = {name: judge[name](samples[name]) for name in STRESSED}  # plain, then retrieval, then stressed
    figures["retrieval"] = retrieval(samples["retrieval"], rep(gallery["queries"], repeats), gallery["images"],
                                     gallery["prompts"])
    figures.update({f"{name}_stressed": judge[name](samples[f"{name}_stressed"]) for name in STRESSED
                    if f"{name}_stressed" in samples})
    return figures


def _draw(model, sets: dict, n: int, repeats: int, settings: dict, processor) -> dict:
    """The samples of each set: one `generate_images` call for the first three sets, one for the retrieval set, and
    with `settings["stress"]` one more for the first three sets stressed."""
    extra = {} if processor is None else {"image_processor": processor}

    def draw(prompts, count, seed, guidance_scale=settings["guidance_scale"], **stress):
        if not prompts:
            return []
        return model.generate_images(count, prompt=list(prompts), guidance_scale=guidance_scale,
                                     generator=torch.Generator().manual_seed(seed),
                                     batch_size=settings["batch_size"], show_progress=False, **stress, **extra)

    names = STRESSED  # the first three sets, drawn in one call (and again stressed)
    prompts = [p for name in names for p in sets[name]["prompts"]]

    def by_set(images, suffix=""):  # one call's images, cut back into the sets they were asked for
        cut, start = {}, 0
        for name in names:
            size = n * len(sets[name]["prompts"])
            cut[name + suffix], start = images[start:start + size], start + size
        return cut

    samples = by_set(draw(prompts, n, settings["seed"]))
    gallery = sets["retrieval"]
    samples["retrieval"] = draw([gallery["prompts"][i] for i in gallery["queries"]], repeats, settings["seed"] + 1)
    if settings.get("stress"):  # the same prompts again, each guided from itself without its colour or tone
        samples |= by_set(draw(prompts, n, settings["seed"] + 2, guidance_scale=settings["stress"]["guidance_scale"],
                               temperature=settings["stress"]["temperature"],
                               negative_prompt=list(map(without_attributes, prompts))), "_stressed")
    return samples


def measure_prompts(model, dataset, num_samples: int = 8, guidance_scale: float = 3.0, seed: int = 0, *,
                    batch_size: int = 64, num_people: int = 6, retrieval_samples: int = 1, processor=None,
                    stress: bool = True) -> dict:
    """Sample `model` on the four sets of prompts (`prompt_sets` of `dataset`; `num_samples` per prompt,
    `retrieval_samples` per held-out caption) and an untrained copy of it (`quality.untrained_copy`, seed `seed`),
    and report each figure for both beside its chance level and the real images' ceiling (a JSON-ready dict).
    `processor`: the model's (`PixelGPTProcessor` or image processor), given to `generate_images` and used to see
    the real images as the model does (its quantization); None: the model's own, real images as they are.
    `stress`: also measure the colour words, the composition and the skin tones stressed (each prompt guided from
    itself without its colour or tone words, at STRESS_GUIDANCE and STRESS_TEMPERATURE; `<figure>_stressed`). The
    global (CPU) random state is left as it was, and `model` in the mode it was in."""
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("num_people", num_people),
                        ("retrieval_samples", retrieval_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"measure_prompts needs {name} >= 1, got {value!r}.")
    if not getattr(model.config, "text_vocab_size", 0):
        raise ValueError("measure_prompts needs a text model (config.text_vocab_size > 0).")
    images_processor = getattr(processor, "image_processor", processor)
    see = (lambda images: images) if images_processor is None else (lambda images: quantized(images_processor, images))
    tokenizer = getattr(processor, "tokenizer", None)  # test captions longer than the model reads are not asked
    fits = (lambda caption: True) if tokenizer is None else (lambda caption: len(
        tokenizer.backend_tokenizer.encode(caption, add_special_tokens=False).ids) <= processor.max_text_length)
    sets = prompt_sets(dataset, num_people, see, fits)
    settings = {"num_samples": num_samples, "retrieval_samples": retrieval_samples, "guidance_scale": guidance_scale,
                "seed": seed, "batch_size": batch_size}
    if stress:
        settings["stress"] = {"guidance_scale": STRESS_GUIDANCE, "temperature": STRESS_TEMPERATURE,
                              "negative_prompt": "the prompt without its colour or skin-tone words"}
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            model.eval()
            trained = _figures(sets, _draw(model, sets, num_samples, retrieval_samples, settings, processor),
                               num_samples, retrieval_samples)
            untrained_model = untrained_copy(model, seed)
            for name in ("image_processor", "processor"):  # the prompt tokenizer and processor, as the model's
                setattr(untrained_model, name, getattr(model, name, None))
            untrained = _figures(sets, _draw(untrained_model, sets, num_samples, retrieval_samples, settings,
                                             processor), num_samples, retrieval_samples)
    finally:
        model.train(was_training)
    return _report(sets, settings, trained, untrained, seed)


def _report(sets: dict, settings: dict, trained: dict, untrained: dict, seed: int) -> dict:
    """The JSON-ready report: per figure, the samples', the untrained model's, the real images' and chance."""
    gallery = sets["retrieval"]
    images = {name: sets[name]["images"] for name in STRESSED}
    stressed = {f"{name}_stressed": images[name] for name in STRESSED if f"{name}_stressed" in trained}
    real = _figures(sets, {**images, **stressed, "retrieval": jittered([gallery["images"][i] for i in
                                                                          gallery["queries"]], seed)}, 1, 1)
    levels = chance(len(sets["colour_references"]), len(gallery["images"]))
    report = {"sampling": settings, "features": FEATURES_NAME}
    for name in trained:
        report[name] = {"trained_model_samples": trained[name], "untrained_model_samples": untrained[name],
                        "real_images": real[name], "chance": levels.get(name.removesuffix("_stressed"))}
    report["colour_words"]["references"] = {c: [round(v, 1) for v in rgb]
                                            for c, rgb in sets["colour_references"].items()}
    report["colour_words"]["prompts"] = sets["colour_words"]["prompts"]
    report["colour_words"]["unjudged_colours"] = sets["unjudged_colours"]
    report["composition"]["prompts"] = sets["composition"]["prompts"]
    report["skin_tones"].update(people=sets["skin_tones"]["people"], tones=list(SKIN_TONES),
                                references=[[round(v, 1) for v in rgb] for rgb in sets["skin_tones"]["references"]])
    report["retrieval"].update(num_gallery=len(gallery["images"]), num_queries=len(gallery["queries"]),
                               features=FEATURES_NAME,
                               real_images_are="test images shifted by up to 1/32 of their side, noise 8 (jittered)")
    return report


def markdown(report: dict) -> str:
    """The report as a Markdown table: each figure for the samples, the untrained model, the real images, chance."""
    def cell(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = [("Colour words (share of the colour named)", "colour_words", "accuracy"),
            ("Colour words: colour and shape right", "colour_words", "colour_and_shape_accuracy"),
            ("Composition: held-out colour x shape pairs", "composition", "accuracy"),
            ("Composition: colour and shape right", "composition", "colour_and_shape_accuracy"),
            ("Skin tones (tone pairs in order of lightness)", "skin_tones", "in_order_share"),
            ("Retrieval top-1 among the test images", "retrieval", "top_1"),
            ("Retrieval top-5 among the test images", "retrieval", "top_5"),
            ("Colour words, stressed", "colour_words_stressed", "accuracy"),
            ("Colour words, stressed: colour and shape right", "colour_words_stressed", "colour_and_shape_accuracy"),
            ("Composition, stressed", "composition_stressed", "accuracy"),
            ("Composition, stressed: colour and shape right", "composition_stressed", "colour_and_shape_accuracy"),
            ("Skin tones, stressed", "skin_tones_stressed", "in_order_share")]
    lines = ["| figure | samples | untrained model | real images | chance |", "|---|---|---|---|---|"]
    for title, name, key in (row for row in rows if row[1] in report):
        entry = report[name]
        level = entry["chance"][key] if isinstance(entry["chance"], dict) else entry["chance"]
        values = [entry[part][key] for part in ("trained_model_samples", "untrained_model_samples", "real_images")]
        lines.append(f"| {title} | " + " | ".join(map(cell, [*values, level])) + " |")
        if name.startswith("composition"):  # each pair, by the row's figure
            per_group = "per_group" if key == "accuracy" else "per_group_colour_and_shape"
            for pair in entry["trained_model_samples"][per_group]:
                values = [entry[part][per_group].get(pair) for part in
                          ("trained_model_samples", "untrained_model_samples", "real_images")]
                lines.append(f"| &nbsp;&nbsp;{pair} | " + " | ".join(map(cell, [*values, level])) + " |")
    s = report["sampling"]
    lines.append(f"\nSamples per prompt: {s['num_samples']} ({s['retrieval_samples']} per retrieval caption); guidance "
                 f"scale {s['guidance_scale']}, seed {s['seed']}; retrieval among {report['retrieval']['num_gallery']} "
                 f"test images by {report['features']}; people: {', '.join(report['skin_tones']['people'])}.")
    if s.get("stress"):
        lines.append(f"Stressed: each prompt guided from itself without its colour or skin-tone words (\"square\" "
                     f"for \"purple square\", \"wave\" for \"wave dark skin tone\") at guidance "
                     f"{s['stress']['guidance_scale']:g}, temperature {s['stress']['temperature']:g}.")
    r = report["retrieval"]
    if r.get("num_queries", r["num_gallery"]) < r["num_gallery"]:  # captions longer than the model reads
        lines.append(f"Retrieval asked for {r['num_queries']} of the {r['num_gallery']} test captions: the others "
                     "are longer than the model reads.")
    return "\n".join(lines)
