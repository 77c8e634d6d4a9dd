"""examples/build_default_dataset.py rebuilds exactly the shipped built-in data from the official files."""

import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED_DATA

sys.path.insert(0, str(REPO_ROOT / "examples"))
import build_default_dataset  # noqa: E402

SOURCE = SHARED_DATA / "fashion-mnist"


@pytest.mark.skipif(not (SOURCE / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the official Fashion-MNIST files in ../shared/data/fashion-mnist (maintainers only)")
def test_rebuild_matches_the_shipped_files(tmp_path, default_dataset):
    from datasets import load_dataset

    images = build_default_dataset.read_idx(SOURCE / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = build_default_dataset.read_idx(SOURCE / "t10k-labels-idx1-ubyte.gz", 8)
    build_default_dataset.build(images, labels, 100, tmp_path / "test.parquet")
    rebuilt = load_dataset("parquet", data_files=str(tmp_path / "test.parquet"))["train"]
    shipped = default_dataset["test"]
    assert rebuilt["label"] == shipped["label"] and rebuilt.features == shipped.features
    assert [np.asarray(i).tobytes() for i in rebuilt["image"]] == [np.asarray(i).tobytes() for i in shipped["image"]]
    assert sorted(shipped["label"].count(c) for c in range(10)) == [100] * 10


def write_idx(path, array: np.ndarray, header: bytes):
    import gzip

    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_train_per_class_sets_how_many_training_images_each_class_gives(tmp_path, monkeypatch):
    """Fake official files (3 images per class, labels cycling 0..9): `--train_per_class 2` keeps the first two of
    each class in file order; the test file keeps its 100 per class (here all 3)."""
    from datasets import load_dataset

    images = np.arange(30)[:, None, None] * np.ones((1, 28, 28))  # image i is flat with value i
    labels = np.arange(30) % 10
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, bytes(16))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, bytes(8))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["build", "--source", str(tmp_path), "--train_per_class", "2", "--out", str(out)])
    build_default_dataset.main()
    train = load_dataset("parquet", data_files=str(out / "fashion_mnist_train.parquet"))["train"]
    assert [int(np.asarray(i)[0, 0]) for i in train["image"]] == list(range(20))  # the first two of each class
    assert train["label"] == list(range(10)) * 2
    assert len(load_dataset("parquet", data_files=str(out / "fashion_mnist_test.parquet"))["train"]) == 30
    monkeypatch.setattr(sys, "argv", ["build", "--source", str(tmp_path), "--train_per_class", "0"])
    with pytest.raises(SystemExit):
        build_default_dataset.main()
