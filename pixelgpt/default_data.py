"""The built-in datasets shipped with the package (see `pixelgpt/data/README.md`), so that training and tests work on
a fresh machine without network access: the default, a class-balanced Fashion-MNIST subset (MIT license), and a
captioned Twemoji set for text-to-image training (CC-BY 4.0)."""

from pathlib import Path

from datasets import DatasetDict, load_dataset

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DATASET_NAME = "fashion-mnist-subset (built-in)"
EMOJI_DATASET_NAME = "twemoji-captions (built-in)"


def load_default_dataset(streaming: bool = False) -> DatasetDict:
    """`DatasetDict` with "train" (6,000) and "test" (1,000) splits; columns `image` (PIL, mode L) and `label`
    (ClassLabel with the 10 Fashion-MNIST class names). `streaming=True`: an `IterableDatasetDict` instead."""
    files = {split: str(DATA_DIR / f"fashion_mnist_{split}.parquet") for split in ("train", "test")}
    return load_dataset("parquet", data_files=files, streaming=streaming)


def load_emoji_dataset(streaming: bool = False) -> DatasetDict:
    """`DatasetDict` with "train" (3,592) and "test" (194) splits of 64x64 Twemoji; columns `image` (PIL, mode RGBA,
    transparent background), `text` (the caption, `pixelgpt.emoji_captions.emoji_caption`), `name` (the emoji's
    short name) and `label` (ClassLabel with the 10 Unicode emoji categories). The test split holds every image of
    `pixelgpt.emoji_captions.HELD_OUT_PAIRS`. `streaming=True`: an `IterableDatasetDict` instead."""
    files = {split: str(DATA_DIR / f"emoji_{split}.parquet") for split in ("train", "test")}
    return load_dataset("parquet", data_files=files, streaming=streaming)
