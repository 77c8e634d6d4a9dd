"""Rebuild the built-in captioned emoji dataset (`pixelgpt/data/emoji_*.parquet`) from the Twemoji array in the
shared data folder. Maintainers only: users get the parquet files with the package.

    python examples/build_emoji_dataset.py --npz ../shared/data/twemoji64.npz

Every emoji of the array, 64x64 RGBA as a palette PNG of at most 256 colours per image, with its caption
(`pixelgpt.emoji_captions`), its short name and its Unicode category. The test split holds every image of the colour
x shape pairs held out of training (`HELD_OUT_PAIRS`) and a seeded random 5% of the emoji outside the colour x shape
grid; the training split holds everything else (so the grid's other 22 cells are all in training). Both keep the
array's order, and a rebuild writes the same bytes.
"""

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from pixelgpt.emoji_captions import HELD_OUT_PAIRS, colour_shape, emoji_caption

TEST_FRACTION = 0.05
SEED = 0


def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each in the array's order."""
    pairs = [colour_shape(name) for name in names]
    held_out = np.array([pair in HELD_OUT_PAIRS for pair in pairs])
    # The random 5% is drawn outside the colour x shape grid: a grid cell drawn by chance would be missing from
    # training without being a held-out pair, and a composition test would read it as seen.
    rest = np.flatnonzero([pair is None for pair in pairs])
    rng = np.random.default_rng(SEED)
    sampled = rng.choice(rest, size=round(TEST_FRACTION * len(rest)), replace=False)
    test = np.sort(np.concatenate([np.flatnonzero(held_out), sampled]))
    return np.setdiff1d(np.arange(len(names)), test), test


def build(images: np.ndarray, names: list[str], labels: np.ndarray, categories: list[str], keep: np.ndarray,
          out: Path) -> None:
    encoded = []
    for i in keep:
        buf = io.BytesIO()
        # A palette of at most 256 RGBA colours per image (no dithering): 7 MB instead of 12 for lossless RGBA PNGs,
        # and composited on white the pixels differ from the originals by 1 level of 255 on average (flat emoji
        # colours are kept; some anti-aliased edge pixels move further).
        palette = PILImage.fromarray(images[i]).quantize(256, method=PILImage.Quantize.FASTOCTREE,
                                                         dither=PILImage.Dither.NONE)
        palette.save(buf, format="PNG", optimize=True)
        encoded.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": Image(mode="RGBA"), "text": Value("string"), "name": Value("string"),
                         "label": ClassLabel(names=categories)})
    columns = {"image": encoded, "text": [emoji_caption(names[i]) for i in keep], "name": [names[i] for i in keep],
               "label": labels[keep].tolist()}
    Dataset.from_dict(columns, features=features).to_parquet(str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {len(keep)} images, {out.stat().st_size} bytes, sha256 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True,
                        help="twemoji64.npz: images (N, 64, 64, 4) uint8, labels, names, categories.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "pixelgpt" / "data",
                        help="Output folder (default: pixelgpt/data).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with np.load(args.npz) as data:
        images, labels = data["images"], data["labels"]
        names, categories = [str(n) for n in data["names"]], [str(c) for c in data["categories"]]
    if images.shape[1:] != (64, 64, 4) or images.dtype != np.uint8:
        parser.error(f"{args.npz}: images are {images.shape} {images.dtype}, expected (N, 64, 64, 4) uint8")
    for name, keep in zip(("train", "test"), split(names)):
        build(images, names, labels, categories, keep, args.out / f"emoji_{name}.parquet")


if __name__ == "__main__":
    main()
