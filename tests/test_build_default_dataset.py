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
