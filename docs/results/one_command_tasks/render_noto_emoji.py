"""Emoji artwork of another style than Twemoji: 200 Noto Color Emoji glyphs (Debian's fonts-noto-color-emoji,
`apt-get install fonts-noto-color-emoji`; SIL Open Font License), 64x64 over white as the Twemoji folder is.

    python docs/results/one_command_tasks/render_noto_emoji.py --out noto_emoji
"""

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=200)
    args = p.parse_args()
    font = ImageFont.truetype(FONT, 109)  # a bitmap font: 109 is its one size
    codepoints = list(range(0x1F300, 0x1F650)) + list(range(0x1F680, 0x1F6D0)) + list(range(0x1F900, 0x1FA00))
    random.Random(0).shuffle(codepoints)
    out, n = Path(args.out), 0
    out.mkdir(parents=True, exist_ok=True)
    for cp in codepoints:
        canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((0, 0), chr(cp), font=font, embedded_color=True)
        pixels = np.asarray(canvas)
        drawn = pixels[..., :3][pixels[..., 3] > 0]
        if len(drawn) == 0 or drawn.std() < 10:  # no glyph, or the font's blank box
            continue
        square = Image.new("RGBA", (136, 136), (255, 255, 255, 0))
        square.paste(canvas, (0, 4))
        small = square.resize((64, 64), Image.Resampling.LANCZOS)
        Image.alpha_composite(Image.new("RGBA", small.size, (255, 255, 255, 255)), small).convert("RGB").save(
            out / f"{cp:05x}.png")
        n += 1
        if n == args.count:
            break


if __name__ == "__main__":
    main()
