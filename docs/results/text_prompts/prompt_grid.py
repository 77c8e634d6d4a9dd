"""The README's picture of a text model: one prompt per row, its samples beside it, the prompt written on the left.

    python docs/results/text_prompts/prompt_grid.py --model pixelgpt-emoji --output prompt_grid.png
"""

import argparse

import torch
from PIL import Image, ImageDraw
from transformers import AutoModel

from pixelgpt.utils import make_image_grid

# Trained colour x shape prompts, held-out pairs (never in training: marked *), skin tones, and other emoji.
PROMPTS = ["red heart", "blue circle", "green square", "purple square *", "orange circle *", "yellow square *",
           "wave light skin tone", "wave dark skin tone", "thumbs up medium skin tone", "grinning face", "flag fr",
           "pizza"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A text model folder or Hub id.")
    parser.add_argument("--output", default="prompt_grid.png", help="Where the PNG goes.")
    parser.add_argument("--num_images", type=int, default=6, help="Samples per prompt.")
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="Classifier-free guidance.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator.")
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    prompts = [p.rstrip(" *") for p in PROMPTS]
    images = model.generate_images(args.num_images, prompt=prompts, guidance_scale=args.guidance_scale,
                                   generator=torch.Generator().manual_seed(args.seed), batch_size=72)
    grid = make_image_grid(images, cols=args.num_images)
    grid = grid.resize((2 * grid.width, 2 * grid.height), Image.Resampling.NEAREST)
    row, label = grid.height // len(PROMPTS), 230
    page = Image.new("RGB", (grid.width + label, grid.height), "white")
    page.paste(grid, (label, 0))
    draw = ImageDraw.Draw(page)
    for i, prompt in enumerate(PROMPTS):
        draw.text((8, i * row + row // 2 - 6), prompt, fill="black")
    page.save(args.output)


if __name__ == "__main__":
    main()
