"""Rebuild the built-in default dataset (`pixelgpt/data/fashion_mnist_*.parquet`) from the official Fashion-MNIST
idx files. Maintainers only: users get the parquet files with the package.

    python examples/build_default_dataset.py --source ../shared/data/fashion-mnist

Takes the first 600 images of each class from the official training set and the first 100 of each class from the
official test set (official order), PNG-encodes them and writes two parquet files readable by `datasets`.
`--train_per_class 6000` writes the whole official training set instead (for measurements that need more data than
the package ships; the test file stays the same 1,000 images):

    python examples/build_default_dataset.py --source ../shared/data/fashion-mnist --train_per_class 6000 \
        --out fashion-full        # then: train.py --dataset_name fashion-full
"""

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), dtype=np.uint8, offset=offset)


def build(images: np.ndarray, labels: np.ndarray, per_class: int, out: Path) -> None:
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    keep.sort()  # keep the official order
    encoded = []
    for i in keep:
        buf = io.BytesIO()
        PILImage.fromarray(images[i]).save(buf, format="PNG", optimize=True)
        encoded.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES)})
    Dataset.from_dict({"image": encoded, "label": labels[keep].tolist()}, features=features).to_parquet(str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {len(keep)} images, {out.stat().st_size} bytes, sha256 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="Folder with the four official *-ubyte.gz files.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "pixelgpt" / "data",
                        help="Output folder (default: pixelgpt/data).")
    parser.add_argument("--train_per_class", type=int, default=600, choices=range(1, 6001), metavar="[1-6000]",
                        help="Training images per class (the package ships 600; the official set has 6,000).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", 100)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz", 8)
        build(images, labels, per_class, args.out / f"fashion_mnist_{split}.parquet")


if __name__ == "__main__":
    main()
