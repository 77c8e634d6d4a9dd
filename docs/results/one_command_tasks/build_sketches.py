"""Paired data for `--task translate`: the line drawing of every image of a folder (sketch -> picture, as
edges2shoes), written under the same relative paths so that `train.py --source_dir` pairs them.

    python docs/results/one_command_tasks/build_sketches.py emoji noto_emoji --out sketches

A pixel is a line where the colour changes: the largest Sobel gradient over R, G and B (so that two colours of the
same gray still part) above `--threshold`, thickened by one pixel so that lines survive a halving of the resolution.
Lines are black on white, as a pen drawing; the colours, shading and flat fills are what the model has to draw.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def sketch(image: Image.Image, threshold: float) -> Image.Image:
    """Black lines on white where `image` (composited over white) changes colour."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    rgb = np.asarray(Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB"), dtype=np.float32)
    padded = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    dx = (padded[1:-1, 2:] - padded[1:-1, :-2]) * 2 + padded[:-2, 2:] - padded[:-2, :-2] + padded[2:, 2:] \
        - padded[2:, :-2]  # (H, W, 3) horizontal Sobel per channel
    dy = (padded[2:, 1:-1] - padded[:-2, 1:-1]) * 2 + padded[2:, :-2] - padded[:-2, :-2] + padded[2:, 2:] \
        - padded[:-2, 2:]
    strength = np.sqrt(dx**2 + dy**2).max(axis=2)  # (H, W): the channel that changes most
    lines = Image.fromarray(np.where(strength > threshold, 0, 255).astype(np.uint8))
    return lines.filter(ImageFilter.MinFilter(3)).convert("RGB")  # thicken: black spreads one pixel


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="Image folders; each one's sketches go to --out/<folder name>/.")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=200.0, help="Sobel strength (0-255 scale) of a line.")
    args = p.parse_args()
    for folder in map(Path, args.folders):
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in EXTENSIONS)
        for file in files:
            target = Path(args.out) / folder.name / file.relative_to(folder).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            sketch(Image.open(file), args.threshold).save(target)
        print(f"{len(files)} sketches of {folder} in {Path(args.out) / folder.name}")


if __name__ == "__main__":
    main()
