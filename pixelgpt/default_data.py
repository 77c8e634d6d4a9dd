"""The built-in default dataset: a class-balanced Fashion-MNIST subset shipped with the package (MIT license,
see `pixelgpt/data/README.md`), so that training and tests work on a fresh machine without network access."""

from pathlib import Path

from datasets import DatasetDict, load_dataset

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DATASET_NAME = "fashion-mnist-subset (built-in)"


def load_default_dataset(streaming: bool = False) -> DatasetDict:
    """`DatasetDict` with "train" (6,000) and "test" (1,000) splits; columns `image` (PIL, mode L) and `label`
    (ClassLabel with the 10 Fashion-MNIST class names). `streaming=True`: an `IterableDatasetDict` instead."""
    files = {split: str(DATA_DIR / f"fashion_mnist_{split}.parquet") for split in ("train", "test")}
    return load_dataset("parquet", data_files=files, streaming=streaming)
