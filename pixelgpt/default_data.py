"""The built-in datasets shipped with the package (see `pixelgpt/data/README.md`), so that training and tests work on
a fresh machine without network access: the default, a class-balanced Fashion-MNIST subset (MIT license), and a
captioned Twemoji set for text-to-image training (CC-BY 4.0)."""

from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset

from .emoji_captions import colour_shape
from .emoji_recolour import RECOLOURED_COPIES, recoloured_rows

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DATASET_NAME = "fashion-mnist-subset (built-in)"
EMOJI_DATASET_NAME = "twemoji-captions (built-in)"
# The 22 colour x shape emoji of the training split are 0.6% of it: too rare for a default run to learn what a colour
# word draws. The built-in training split shows each of them this many times (the held-out pairs never).
GRID_REPEATS = 16


def load_default_dataset(streaming: bool = False) -> DatasetDict:
    """`DatasetDict` with "train" (6,000) and "test" (1,000) splits; columns `image` (PIL, mode L) and `label`
    (ClassLabel with the 10 Fashion-MNIST class names). `streaming=True`: an `IterableDatasetDict` instead."""
    files = {split: str(DATA_DIR / f"fashion_mnist_{split}.parquet") for split in ("train", "test")}
    return load_dataset("parquet", data_files=files, streaming=streaming)


def load_emoji_dataset(streaming: bool = False, grid_repeats: int = GRID_REPEATS,
                       recoloured_copies: int = RECOLOURED_COPIES) -> DatasetDict:
    """`DatasetDict` with "train" (3,593 emoji) and "test" (193) splits of 64x64 Twemoji; columns `image` (PIL, mode
    RGBA, transparent background), `text` (the caption, `pixelgpt.emoji_captions.emoji_caption`), `name` (the emoji's
    short name) and `label` (ClassLabel with the 10 Unicode emoji categories). The test split holds every image of
    `pixelgpt.emoji_captions.HELD_OUT_PAIRS`; the training split ends with its colour x shape emoji again, so that
    each is there `grid_repeats` times (3,593 + 22 x 15 rows by default), then with `recoloured_copies` recoloured
    copies of each emoji of one dominant colour (`pixelgpt.emoji_recolour`; 0 for the real emoji only).
    `streaming=True`: an `IterableDatasetDict` instead."""
    if grid_repeats < 1 or recoloured_copies < 0:
        raise ValueError(f"load_emoji_dataset needs grid_repeats >= 1 and recoloured_copies >= 0, got "
                         f"{grid_repeats} and {recoloured_copies}")
    files = {split: str(DATA_DIR / f"emoji_{split}.parquet") for split in ("train", "test")}
    dataset = load_dataset("parquet", data_files=files, streaming=streaming)
    real = dict(dataset)  # the files' rows, each once: what the recoloured copies are made from
    if grid_repeats > 1:
        train = dataset["train"]
        grid = train.filter(lambda name: colour_shape(name) is not None, input_columns="name")
        dataset["train"] = concatenate_datasets([train] + [grid] * (grid_repeats - 1))
    if recoloured_copies > 0:
        if streaming:  # the copies are made in memory, from the files read unstreamed
            real = load_dataset("parquet", data_files=files)
        copies = Dataset.from_dict(recoloured_rows(real["train"], recoloured_copies, avoid=real["test"]["text"]),
                                   features=real["train"].features)
        dataset["train"] = concatenate_datasets([dataset["train"],
                                                 copies.to_iterable_dataset() if streaming else copies])
    return dataset
