"""The README's picture of a text model: one prompt per row, its samples beside it, the prompt written on the left.
Colour x shape prompts are drawn with the colour stressed (guided from the shape alone, as
`pixelgpt.prompt_quality` measures them), the others at `PROMPT_GUIDANCE`.

    python docs/results/text_prompts/prompt_grid.py --model pixelgpt-emoji --output prompt_grid.png
"""

import argparse

import torch
from PIL import Image, ImageDraw
from transformers import AutoModel

from pixelgpt.emoji_captions import COLOURS
from pixelgpt.prompt_quality import PROMPT_GUIDANCE, STRESS_GUIDANCE, STRESS_TEMPERATURE, without_attributes
from pixelgpt.utils import make_image_grid

# Trained colour x shape prompts, held-out pairs (never in training: marked *), skin tones, and other emoji.
PROMPTS = ["red heart", "blue circle", "green square", "purple square *", "orange circle *", "yellow square *",
           "wave light skin tone", "wave dark skin tone", "thumbs up medium skin tone", "grinning", "flag fr",
           "pizza"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A text model folder or Hub id.")
    parser.add_argument("--output", default="prompt_grid.png", help="Where the PNG goes.")
    parser.add_argument("--num_images", type=int, default=6, help="Samples per prompt.")
    parser.add_argument("--guidance_scale", type=float, default=PROMPT_GUIDANCE,
                        help="Classifier-free guidance of the prompts without a colour word.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator.")
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    prompts = [p.rstrip(" *") for p in PROMPTS]
    coloured = [p for p in prompts if p.split()[0] in COLOURS]
    plain = [p for p in prompts if p not in coloured]
    draw = dict(generator=torch.Generator().manual_seed(args.seed), batch_size=72)
    stressed = model.generate_images(args.num_images, prompt=coloured, negative_prompt=list(map(without_attributes,
                                     coloured)), guidance_scale=STRESS_GUIDANCE, temperature=STRESS_TEMPERATURE, **draw)
    others = model.generate_images(args.num_images, prompt=plain, guidance_scale=args.guidance_scale, **draw)
    n = args.num_images
    rows = {p: (stressed if p in coloured else others)[i * n:(i + 1) * n]
            for group in (coloured, plain) for i, p in enumerate(group)}
    images = [image for p in prompts for image in rows[p]]
    grid = make_image_grid(images, cols=args.num_images)
    grid = grid.resize((2 * grid.width, 2 * grid.height), Image.Resampling.NEAREST)
    row, label = grid.height // len(PROMPTS), 230
    page = Image.new("RGB", (grid.width + label, grid.height), "white")
    page.paste(grid, (label, 0))
    pen = ImageDraw.Draw(page)
    for i, prompt in enumerate(PROMPTS):
        text = f"{prompt} (stressed)" if prompt.split()[0] in COLOURS else prompt
        pen.text((8, i * row + row // 2 - 6), text, fill="black")
    page.save(args.output)


if __name__ == "__main__":
    main()
