"""Build a labelled 28x28 image folder that is not Fashion-MNIST: the letters A-J rendered in the installed fonts
(as notMNIST does), white on black, each glyph at a random size, position and slight rotation.

    python docs/results/letters_two_stages/build_letters.py --out letters --per_class 600

Fonts: every installed font that covers English (`fc-list :lang=en`); on Debian the measured set came from
fonts-dejavu, fonts-liberation, fonts-urw-base35, fonts-freefont-ttf, fonts-noto-core, fonts-lato, fonts-open-sans,
fonts-comic-neue and fonts-ebgaramond. Writes <out>/<letter>/<n>.png.
"""

import argparse
import random
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = "ABCDEFGHIJ"


def english_fonts() -> list[str]:
    listed = subprocess.run(["fc-list", ":lang=en", "file"], capture_output=True, text=True, check=True).stdout
    paths = {line.split(":")[0].strip() for line in listed.splitlines() if line.strip()}
    # Symbol fonts claim English but draw pictures (URW's D050000L is Zapf Dingbats).
    return sorted(p for p in paths if not any(word in p.lower() for word in ("dingbat", "symbol", "d050000l")))


def render(font_path: str, letter: str, rng: random.Random) -> Image.Image | None:
    size = rng.randint(18, 26)
    try:
        font = ImageFont.truetype(font_path, size * 3)
    except OSError:
        return None
    canvas = Image.new("L", (28 * 3 * 2, 28 * 3 * 2), 0)
    ImageDraw.Draw(canvas).text((28 * 3, 28 * 3), letter, fill=255, font=font, anchor="mm")
    canvas = canvas.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    scale = size * 3 / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                         Image.Resampling.LANCZOS)
    out = Image.new("L", (28 * 3, 28 * 3), 0)
    x = (out.width - glyph.width) // 2 + rng.randint(-6, 6)
    y = (out.height - glyph.height) // 2 + rng.randint(-6, 6)
    out.paste(glyph, (x, y))
    return out.resize((28, 28), Image.Resampling.LANCZOS)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--per_class", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    fonts = english_fonts()
    # A font without Latin glyphs draws the same box for every letter: keep fonts whose A and B differ.
    usable = []
    for path in fonts:
        a, b = render(path, "A", random.Random(0)), render(path, "B", random.Random(0))
        if a is not None and b is not None and np.abs(np.asarray(a, int) - np.asarray(b, int)).mean() > 8:
            usable.append(path)
    print(f"{len(usable)} of {len(fonts)} fonts draw distinct letters")
    for letter in LETTERS:
        folder = Path(args.out, letter)
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        while n < args.per_class:
            image = render(rng.choice(usable), letter, rng)
            if image is not None:
                image.save(folder / f"{n:04d}.png")
                n += 1


if __name__ == "__main__":
    main()
