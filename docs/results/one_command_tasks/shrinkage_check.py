"""Does shrinking uncertain colours towards gray rescue a colorizer on artwork of another style? Draws 4 samples per
image (the model's colours only), then reports the PSNR of the gray input, of one sample, of the mean of 4, and of
the mean (or one sample) with its chroma shrunk by |mean|^2 / (|mean|^2 + lam * variance) of the draws; every
output keeps the input's own luminance.

    python docs/results/one_command_tasks/shrinkage_check.py MODEL noto_emoji 100
    python docs/results/one_command_tasks/shrinkage_check.py MODEL heldout 100   # Twemoji's held-out images
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from pixelgpt.quality import quantized
from pixelgpt.utils import psnr

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
import transform_quality  # noqa: E402

DRAWS = 4


def chroma(rgb):
    """(..., 3) RGB -> (..., 2) Cb, Cr around 0 (JPEG's YCbCr)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([-0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b], -1)


def to_rgb(y, c):
    cb, cr = c[..., 0], c[..., 1]
    return np.clip(np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1), 0, 255)


def main(name, folder, count):
    model = AutoModel.from_pretrained(name).eval()
    model.image_processor = processor = AutoImageProcessor.from_pretrained(name)
    where = ["--train_data_dir", "emoji"] if folder == "heldout" else ["--eval_data_dir", folder]
    args = transform_quality.build_parser().parse_args(["colorize", "--model", name, "--num_images", count, *where])
    images = transform_quality.held_out_images(args, model)
    truth = np.stack([np.asarray(i, dtype=np.float64) for i in quantized(processor, images)])
    gray = np.stack([np.asarray(Image.fromarray(t.astype(np.uint8)).convert("L"), dtype=np.float64) for t in truth])
    inputs = [Image.fromarray(g.astype(np.uint8)) for g in gray]
    drawn = model.colorize_images(inputs, num_samples=DRAWS, keep_luminance=False, batch_size=64,
                                  generator=torch.Generator().manual_seed(0), show_progress=False)
    c = chroma(np.stack([np.asarray(i, dtype=np.float64) for i in drawn]).reshape(len(inputs), DRAWS,
                                                                                   *truth.shape[1:]))
    mean = c.mean(1)
    variance = ((c - mean[:, None]) ** 2).sum(-1).mean(1)
    power = (mean**2).sum(-1)

    def score(colour):
        return float(psnr(to_rgb(gray, colour), truth).mean())

    print("gray", score(np.zeros_like(mean)))
    print("one sample", score(c[:, 0]))
    print("mean of k", score(mean))
    for lam in (1.0, 2.0):
        weight = (power / (power + lam * variance + 1e-9))[..., None]
        print("shrunk mean", lam, score(weight * mean))
        print("shrunk sample", lam, score(weight * c[:, 0]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
