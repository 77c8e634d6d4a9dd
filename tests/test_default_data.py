"""pixelgpt.default_data: the built-in datasets load as documented, their files are the ones pixelgpt/data/README.md
names, and examples/build_emoji_dataset.py rebuilds the shipped emoji files byte for byte."""

import hashlib
import re
import sys

import numpy as np
import pytest

from pixelgpt.default_data import DATA_DIR, GRID_REPEATS, load_default_dataset, load_emoji_dataset
from pixelgpt.emoji_captions import HELD_OUT_PAIRS, colour_shape, emoji_caption
from pixelgpt.emoji_recolour import recoloured_rows

from conftest import REPO_ROOT, SHARED_DATA

sys.path.insert(0, str(REPO_ROOT / "examples"))
import build_emoji_dataset  # noqa: E402

NPZ = SHARED_DATA / "twemoji64.npz"
EMOJI_CATEGORIES = ["Activities", "Animals & Nature", "Component", "Flags", "Food & Drink", "Objects",
                    "People & Body", "Smileys & Emotion", "Symbols", "Travel & Places"]


@pytest.fixture(scope="module")
def emoji():
    return load_emoji_dataset()


def readme_sha256() -> dict[str, str]:
    """{file name: sha256} from the tables of pixelgpt/data/README.md (rows "| `name.parquet` | ... | <sha256> |")."""
    rows = re.findall(r"^\| `([\w.]+\.parquet)` \|.*\| ([0-9a-f]{64}) \|$", (DATA_DIR / "README.md").read_text(), re.M)
    return dict(rows)


def test_shipped_files_are_the_ones_the_readme_names():
    documented = readme_sha256()
    assert sorted(documented) == sorted(p.name for p in DATA_DIR.glob("*.parquet"))
    assert {"emoji_train.parquet", "emoji_test.parquet", "fashion_mnist_train.parquet"} <= set(documented)
    for name, digest in documented.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name


def test_emoji_dataset_has_both_splits_with_captioned_64x64_rgba_images(emoji):
    once = load_emoji_dataset(grid_repeats=1, recoloured_copies=0)["train"]
    real = 3593 + 22 * (GRID_REPEATS - 1)
    copies = recoloured_rows(once)
    assert {split: len(emoji[split]) for split in emoji} == {"train": real + len(copies["name"]), "test": 193}
    assert len(once) == 3593 and list(emoji["train"]["name"][:3593]) == list(once["name"])
    repeated = list(emoji["train"]["name"][3593:real])  # the training grid again: each of its 22 emoji, 15 more times
    assert len(set(repeated)) == 22 and all(colour_shape(n) not in (None, *HELD_OUT_PAIRS) for n in repeated)
    assert list(emoji["train"]["name"][real:]) == copies["name"]  # then the recoloured copies
    assert list(emoji["train"]["text"][real:]) == copies["text"]
    for split in ("train", "test"):
        data = emoji[split] if split == "test" else emoji[split].select(range(real))
        assert data.column_names == ["image", "text", "name", "label"]
        assert data.features["label"].names == EMOJI_CATEGORIES
        assert list(data["text"]) == [emoji_caption(name) for name in data["name"]]
        assert {(image.mode, image.size) for image in data["image"]} == {("RGBA", (64, 64))}
    names = list(once["name"]) + list(emoji["test"]["name"])
    assert len(set(names)) == len(names) == 3786  # every emoji once, in one split
    assert len(set(once["text"]) | set(emoji["test"]["text"])) == 3786  # no two share a caption


def test_emoji_test_split_is_the_held_out_pairs_and_five_percent_of_the_rest(emoji):
    test = list(emoji["test"]["name"])
    held_out = [name for name in test if colour_shape(name) in HELD_OUT_PAIRS]
    assert len(held_out) == len(HELD_OUT_PAIRS) == 5
    assert not [name for name in emoji["train"]["name"] if colour_shape(name) in HELD_OUT_PAIRS]
    assert len(test) - len(held_out) == round(0.05 * (3786 - 27))  # 5% of the emoji outside the 27-cell grid


def test_streaming_emoji_dataset_yields_the_same_rows(emoji):
    streamed = load_emoji_dataset(streaming=True)
    first, loaded = next(iter(streamed["test"])), emoji["test"][0]
    assert [first[k] for k in ("text", "name", "label")] == [loaded[k] for k in ("text", "name", "label")]
    assert np.array_equal(np.asarray(first["image"]), np.asarray(loaded["image"]))
    assert [row["name"] for row in streamed["train"]] == list(emoji["train"]["name"])  # copies streamed too


@pytest.mark.parametrize("bad", [dict(grid_repeats=0), dict(recoloured_copies=-1)])
def test_emoji_dataset_refuses_impossible_counts(bad):
    with pytest.raises(ValueError, match="grid_repeats >= 1 and recoloured_copies >= 0"):
        load_emoji_dataset(**bad)


def test_default_dataset_is_still_fashion_mnist():
    default_dataset = load_default_dataset()
    assert {split: len(default_dataset[split]) for split in default_dataset} == {"train": 6000, "test": 1000}
    assert default_dataset["test"].column_names == ["image", "label"]


@pytest.mark.skipif(not NPZ.exists(), reason="needs ../shared/data/twemoji64.npz (maintainers only)")
def test_builder_rebuilds_the_shipped_emoji_test_file_byte_for_byte(tmp_path):
    """The split is the shipped one, and writing the test split again gives the shipped file's bytes (the training
    file is the same code on more rows; it takes ~20 s to encode, so only its indices are compared)."""
    with np.load(NPZ) as data:
        images, labels = data["images"], data["labels"]
        names, categories = [str(n) for n in data["names"]], [str(c) for c in data["categories"]]
    train, test = build_emoji_dataset.split(names)
    shipped = load_emoji_dataset(grid_repeats=1, recoloured_copies=0)
    assert [names[i] for i in train] == list(shipped["train"]["name"])
    assert [names[i] for i in test] == list(shipped["test"]["name"])
    build_emoji_dataset.build(images, names, labels, categories, test, tmp_path / "emoji_test.parquet")
    assert (tmp_path / "emoji_test.parquet").read_bytes() == (DATA_DIR / "emoji_test.parquet").read_bytes()
