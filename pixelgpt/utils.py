"""Small helpers shared by the training script and the CLI: image files, image grids, PSNR and the model card."""

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class TrainingError(RuntimeError):
    """A training run that cannot start or go on (output folder, resume, divergence): the message says why and
    what to do; `pixelgpt train` prints it as one line."""


# Files taken as images in folders (train.py --train_data_dir, the pixelgpt command).
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(folder) -> list[Path]:
    """The image files (IMAGE_EXTENSIONS) anywhere under `folder`, in path order; none for a folder that is not."""
    root = Path(folder).expanduser()
    return sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS) if root.is_dir() else []


def first_image_side(folder) -> int | None:
    """The smaller side of the first image file (in path order) under `folder`; None when it holds none that opens."""
    files = image_files(folder)
    try:
        with Image.open(files[0]) as image:
            return min(image.size)
    except (IndexError, OSError):
        return None


def image_key(value) -> str:
    """What identifies an undecoded image (a datasets value): its file's path, else a sha1 digest of its bytes."""
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        if value.get("bytes"):
            return hashlib.sha1(value["bytes"]).hexdigest()
    return repr(value)


def open_image(value, where: str) -> Image.Image:
    """Decode one image: a PIL image, a path, or a datasets value (dict with bytes/path). A file that cannot be
    read raises a ValueError naming it (or `where`)."""
    if isinstance(value, Image.Image):
        return value
    source = value.get("bytes") or value.get("path") if isinstance(value, dict) else value
    name = value.get("path") if isinstance(value, dict) and value.get("path") else where
    if isinstance(source, bytes) and name == where:  # no file name (parquet, Hub data): name it by its content
        name = f"{where} without a file name (sha1 {image_key(value)[:12]})"
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()  # force a full decode: truncated files fail here, not later in a worker
    except Exception as err:  # PIL raises many types for broken files
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "its bytes", str(err))  # no memory address
        raise ValueError(f"{name}: cannot read image ({type(err).__name__}: {detail})") from err
    image.info["pixelgpt_name"] = name
    return image


def class_name(config, label: int) -> str | None:
    """The name training saved for class `label` (the config's id2label), or None where it holds only transformers'
    `LABEL_<i>` placeholder."""
    name = config.id2label.get(label)
    return None if name is None or name == f"LABEL_{label}" else name


def make_image_grid(images: list, cols: int = 8, pad: int = 1, background=(255, 255, 255)) -> Image.Image:
    """Tile equally sized PIL images row by row (`cols` per row) with `pad` pixels between them."""
    if not images:
        raise ValueError("make_image_grid needs at least one image.")
    w, h = images[0].size
    rows = -(-len(images) // cols)
    mode = "L" if all(i.mode == "L" for i in images) else "RGB"
    fill = background[0] if mode == "L" else tuple(background)
    grid = Image.new(mode, (cols * (w + pad) + pad, rows * (h + pad) + pad), fill)
    for i, image in enumerate(images):
        grid.paste(image.convert(mode), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


# The narrowest a grid is shown on a model card: a 28x28 grid of 8 columns is 233 pixels wide, too small to see.
CARD_GRID_MIN_WIDTH = 512


def enlarge_nearest(image: Image.Image, min_size: int = CARD_GRID_MIN_WIDTH, longer_side: bool = False) -> Image.Image:
    """`image` scaled up by the smallest whole factor that makes its width (with `longer_side`: its longer side) at
    least `min_size` pixels, with nearest neighbour: each pixel becomes a factor x factor block of the same value,
    nothing is blurred or invented."""
    factor = max(1, -(-min_size // (max(image.size) if longer_side else image.width)))
    if factor == 1:
        return image.copy()
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


# Identical images have no finite PSNR: the mean squared error is floored at this, so that they score 100 dB.
PSNR_MIN_MSE = 255.0**2 * 1e-10


def psnr(a, b):
    """Per-image PSNR in dB (peak 255) of `(B, H, W, C)` images on the 0-255 scale: uint8, or floats such as a mean
    of samples. Torch tensors give a float32 tensor (what training gathers across processes), numpy arrays a float64
    array (average it for a mean over images); capped at 100 dB (see PSNR_MIN_MSE)."""
    torch_inputs = isinstance(a, torch.Tensor)
    xp = torch if torch_inputs else np
    a, b = (a.float(), b.float()) if torch_inputs else (np.asarray(a, np.float64), np.asarray(b, np.float64))
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * xp.log10(255.0**2 / mse.clip(min=PSNR_MIN_MSE))
