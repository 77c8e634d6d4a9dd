"""pixelgpt.training.data: the splits (folders, datasets, the built-in set; prepared or streamed), paired sources,
labels, reading and checking images, encoding with an image tokenizer, and the collate function. No training."""

import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from safetensors.torch import save_file
from training_helpers import fresh_accelerator, image_folder_fixture

from pixelgpt import PixelGPTImageProcessor, PixelGPTVQVAE, PixelGPTVQVAEConfig, training
from pixelgpt.default_data import DEFAULT_DATASET_NAME
from pixelgpt.training import DataArguments
from pixelgpt.training import data as data_module
from pixelgpt.training.data import (
    check_images,
    encode_with_tokenizer,
    load_splits,
    load_tokenizer,
    make_collate,
    read_image,
    resolve_label_column,
)
from pixelgpt.training.pixelgpt import build_config, build_processor
from pixelgpt.utils import image_key

process_state = pytest.fixture(autouse=True)(fresh_accelerator)  # for the logger
folder = image_folder_fixture()  # 12 random colour 12x12 images in two class folders
blocks = image_folder_fixture(sizes=((20, 20),) * 4, bad=True)  # 8 20x20 and the 3 bad ones, for 16x16 tokenizers


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """An untrained tiny image tokenizer (16x16 images, 4x4 tokens of 27 codes), saved as --tokenizer reads it."""
    torch.manual_seed(0)
    model = PixelGPTVQVAE(PixelGPTVQVAEConfig(image_size=16, base_channels=8, fsq_levels=[3, 3, 3])).eval()
    folder = tmp_path_factory.mktemp("tok") / "tok"
    model.save_pretrained(folder)
    return model, folder


def save_parquet(folder, **columns):
    """A local dataset (one parquet file) of 8x8 gray `image`s and the given columns: (values, feature)."""
    rng = np.random.default_rng(0)
    count = len(next(iter(columns.values()))[0]) if columns else 8
    rows = {"image": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(count)]}
    features = {"image": ImageFeature()}
    for name, (values, feature) in columns.items():
        rows[name], features[name] = values, feature
    folder.mkdir(parents=True)
    Dataset.from_dict(rows, features=Features(features)).to_parquet(str(folder / "train.parquet"))
    return folder


# ------------------------------------------------------------------------------------------------------- splits
def test_a_folder_is_split_with_the_seed_and_its_images_stay_undecoded(folder, monkeypatch):
    monkeypatch.setattr(data_module, "open_image", lambda *a: pytest.fail("an image was decoded"))
    data = DataArguments(train_data_dir=str(folder), eval_fraction=0.25)
    train, held_out, name = load_splits(data, seed=0)
    assert (len(train), len(held_out), name) == (9, 3, None)  # a local folder names no dataset on the card
    assert train.features["image"].decode is False and held_out[0]["image"]["path"].endswith(".png")
    assert train.features["label"].names == ["cats", "dogs"]
    again, other = load_splits(data, seed=0)[1], load_splits(data, seed=1)[1]
    assert again == held_out and other != held_out
    capped = load_splits(DataArguments(train_data_dir=str(folder), eval_fraction=0.25, max_train_samples=4,
                                       max_eval_samples=2))
    assert (len(capped[0]), len(capped[1])) == (4, 2)


def test_the_built_in_data_and_hub_names_are_named_but_a_local_dataset_path_is_not(tmp_path, monkeypatch):
    assert load_splits(DataArguments(max_train_samples=8, max_eval_samples=4))[2] == DEFAULT_DATASET_NAME
    local = save_parquet(tmp_path / "my" / "private" / "dataset")
    train, held_out, name = load_splits(DataArguments(dataset_name=str(local)))
    assert name is None and len(train) + len(held_out) == 8  # a local path would put this machine's folders on a card
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: Dataset.from_parquet(str(local / "train.parquet")))
    assert load_splits(DataArguments(dataset_name="someone/images"))[2] == "someone/images"


def test_missing_folders_images_columns_and_splits_are_named(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    for data, message in (
            (DataArguments(train_data_dir=str(tmp_path / "empty")), "holds no image files"),
            (DataArguments(train_data_dir=str(tmp_path / "nowhere")), "is not a folder"),
            (DataArguments(train_data_dir=str(folder), image_column="picture"),
             r"Image column 'picture' not found; columns are \['image', 'label'\]"),
            (DataArguments(train_data_dir=str(folder), split="validation"),
             r"Split 'validation' not found; the data has splits \['train'\]"),
            (DataArguments(train_data_dir=str(folder), eval_split="test"), r"--eval_split 'test' not found")):
        with pytest.raises(ValueError, match=message):
            load_splits(data)


def test_a_sharded_stream_never_trains_on_its_held_out_images(tmp_path, monkeypatch):
    """Held-out images are left out by content: each DataLoader worker (and process) reads whole files, and a skip
    of the first images would be divided among them."""
    import datasets

    # datasets waits 5 s after each shuffled pass over parquet files for arrow's threads: nothing to test here.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for shard in range(2):  # images as bytes without file names, as Hub parquet files hold them
        Dataset.from_dict({"image": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(10)]},
                          features=Features({"image": ImageFeature()})).to_parquet(
            str(tmp_path / "data" / f"train-{shard}.parquet"))
    args = training.parse_args(["--dataset_name", str(tmp_path / "data"), "--streaming", "--max_train_steps", "1",
                                "--max_eval_samples", "4", "--dataloader_num_workers", "2"])
    train, held_out, _ = load_splits(args.data, args.run.seed)
    loader = torch.utils.data.DataLoader(train.shuffle(seed=0, buffer_size=4), batch_size=None, num_workers=2)
    trained = [image_key(row["image"]) for row in loader]
    held = {image_key(row["image"]) for row in held_out}
    assert len(held) == 4 and len(trained) == 16 and not held & set(trained)


def test_translate_pairs_folders_by_relative_file_name_and_names_every_missing_source(tmp_path, folder):
    sources = tmp_path / "sources"
    for path in folder.rglob("*.png"):
        relative = path.relative_to(folder)
        (sources / relative.parent).mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").save(sources / relative.with_suffix(".bmp"))  # another format, same name
    paired = training.parse_args(["--task", "translate", "--train_data_dir", str(folder), "--source_dir",
                                  str(sources)]).data
    train, held_out, _ = load_splits(paired)
    for row in list(train) + held_out:
        target, source = row["image"]["path"], row["source"]
        assert source.endswith(".bmp") and target.split("imgs/")[1][:-4] == source.split("sources/")[1][:-4]
    (sources / "dogs" / "3.bmp").unlink()
    (sources / "cats" / "0.bmp").unlink()
    with pytest.raises(ValueError, match=r"2 of 12 target images have no source image of the same name under "
                                         r"--source_dir .*: cats/0.png, dogs/3.png"):
        load_splits(paired)


# ------------------------------------------------------------------------------------------------------- labels
def test_labels_must_be_class_indices_of_a_known_number_of_classes(tmp_path):
    def dataset(values, feature):
        return Dataset.from_dict({"kind": values}, features=Features({"kind": feature}))

    assert resolve_label_column(None, dataset([0, 1], ClassLabel(names=["cat", "dog"])).rename_column(
        "kind", "label")) == ("label", 2, ["cat", "dog"])
    assert resolve_label_column("kind", dataset([0, 4, 2], Value("int64"))) == ("kind", 5, None)
    for values, feature, message in (
            (["a", "b"], Value("string"), r"'kind' has type .*string.*ClassLabel or integer"),
            ([0, 10**9], Value("int64"), r"holds label 1000000000; labels must be class indices .* at most 100000 "
                                         "classes"),
            ([0, -1], Value("int64"), r"holds label -1; labels must be class indices")):
        with pytest.raises(ValueError, match=message):
            resolve_label_column("kind", dataset(values, feature))
    with pytest.raises(ValueError, match="Label column 'kind' not found"):
        resolve_label_column("kind", dataset([0], Value("int64")).rename_column("kind", "other"))
    with pytest.raises(ValueError, match="--class_conditional needs a label column"):
        resolve_label_column(None, dataset([0], Value("int64")))
    local = save_parquet(tmp_path / "stream", kind=([0, 1] * 4, Value("int64")))
    train, _, _ = load_splits(DataArguments(dataset_name=str(local), streaming=True, max_eval_samples=1))
    with pytest.raises(ValueError, match="With --streaming, --class_conditional needs a ClassLabel"):
        resolve_label_column("kind", train)


# ------------------------------------------------------------------------------------------------------- images
def test_a_bad_image_is_named_with_what_is_wrong(blocks):
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=8)
    for name, message in (("cats/broken.png", r"cats/broken\.png: cannot read image"),
                          ("dogs/truncated.png", r"dogs/truncated\.png: cannot read image"),
                          ("dogs/tiny.png", r"dogs/tiny\.png: 5x5 is smaller than --resolution 8")):
        with pytest.raises(ValueError, match=message):
            read_image({"path": str(blocks / name), "bytes": None}, "image", processor, 8)
    image, pixels = read_image({"path": str(blocks / "cats" / "0.png"), "bytes": None}, "image", processor, 8)
    assert image.size == (20, 20) and pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8


def test_bad_held_out_images_are_named_before_training_or_skipped_and_listed(tmp_path, blocks):
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=8)
    rows = [{"image": {"path": str(p), "bytes": None}} for p in sorted(blocks.rglob("*.png"))]
    with pytest.raises(ValueError, match=r"(?s)3 bad image\(s\) in eval:\n .*\nFix or remove them, or pass "
                                         r"--skip_bad_images to skip them") as info:
        check_images(rows, "image", processor, 8, "eval", False, tmp_path)
    assert all(name in str(info.value) for name in ("broken.png", "truncated.png", "tiny.png"))
    good = check_images(rows, "image", processor, 8, "eval", True, tmp_path)
    assert len(good) == len(rows) - 3
    assert len((tmp_path / "skipped_eval_images.txt").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="Every image in eval is bad"):
        check_images(rows[:1] + [r for r in rows if "broken" in r["image"]["path"]], "image", processor, 100, "eval",
                     True, tmp_path)
    assert check_images(good, "image", processor, 8, "eval", False, tmp_path) is good


# ---------------------------------------------------------------------------------------------- image tokenizer
def tokenizer_run(blocks, tokenizer_folder, *argv):
    args = training.parse_args(["--train_data_dir", str(blocks), "--tokenizer", str(tokenizer_folder), "--eval_split",
                                "train", *argv])
    train, _, _ = load_splits(args.data, args.run.seed)
    return args, train, build_processor(args, tokenizer=True)


def test_encoding_once_gives_the_tokenizers_ids_and_the_processors_condition_ids(blocks, tokenizer):
    model, folder = tokenizer
    args, train, processor = tokenizer_run(blocks, folder, "--task", "upscale", "--resolution", "16",
                                           "--skip_bad_images")
    encoded, bad = encode_with_tokenizer(train, model, processor, args.data, args.model.task, "train")
    assert len(bad) == 3 and len(encoded) == len(train) - 3  # the bad images left out, each named
    assert sorted(b.split(": ")[0].rsplit("/", 1)[1] for b in bad) == ["broken.png", "tiny.png", "truncated.png"]
    first = Image.open(encoded[0]["image"]["path"])
    pixels = torch.from_numpy(processor.to_array([first]))
    assert encoded[0]["token_ids"] == model.encode(PixelGPTVQVAE.to_pixel_values(pixels)).flatten().tolist()
    assert encoded[0]["condition_ids"] == processor.encode_condition([first]).condition_ids[0].tolist()


def test_a_bad_image_met_while_encoding_stops_the_run_naming_it(blocks, tokenizer):
    model, folder = tokenizer
    args, train, processor = tokenizer_run(blocks, folder)
    with pytest.raises(ValueError, match=r"Bad train image: \S*(broken|truncated|tiny)\.png: .*\(and 2 more\)\. Fix "
                                         r"or remove it, or pass --skip_bad_images"):
        encode_with_tokenizer(train, model, processor, args.data, args.model.task, "train")


def test_a_streamed_batch_holds_the_tokens_that_encoding_once_gives(blocks, tokenizer):
    model, folder = tokenizer
    args, train, processor = tokenizer_run(blocks, folder, "--task", "upscale", "--resolution", "16")
    good = train.filter(lambda value: "0.png" in value["path"] or "1.png" in value["path"], input_columns="image")
    encoded, _ = encode_with_tokenizer(good, model, processor, args.data, args.model.task, "train")
    config = build_config(args, processor, model, 0, None)
    collate = make_collate(processor, config, args.data, None, model)
    streamed, once = collate([{"image": row["image"]} for row in encoded]), collate(list(encoded))
    assert streamed["input_ids"].shape == (4, 1 + 16) and streamed["condition_ids"].shape == (4, 16)
    assert torch.equal(streamed["input_ids"], once["input_ids"])
    assert torch.equal(streamed["condition_ids"], once["condition_ids"])
    assert streamed["bad_images"] == once["bad_images"] == []


def test_the_collate_function_leaves_bad_rows_out_and_names_them(blocks):
    args = training.parse_args(["--train_data_dir", str(blocks), "--resolution", "8", "--quantization", "rgb",
                                "--num_levels", "4"])
    processor = build_processor(args, None)
    collate = make_collate(processor, build_config(args, processor, None, 0, None), args.data, None)
    rows = [{"image": {"path": str(blocks / name), "bytes": None}} for name in ("cats/0.png", "cats/broken.png",
                                                                                "dogs/1.png")]
    batch = collate(rows)
    assert batch["input_ids"].shape == (2, 1 + 64) and len(batch["bad_images"]) == 1
    assert "broken.png: cannot read image" in batch["bad_images"][0]
    expected = processor.quantize(np.stack([read_image(rows[0]["image"], "image", processor, 8)[1]]))
    assert torch.equal(batch["input_ids"][0, 1:], torch.as_tensor(expected[0]).flatten().long())


def test_load_tokenizer_names_what_it_cannot_load_and_keeps_local_paths_out_of_the_model(tmp_path, tokenizer):
    model, folder = tokenizer
    loaded = load_tokenizer(str(folder))
    assert not loaded.training and loaded.config.name_or_path == ""  # a local path stays off the saved config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="no such folder"):
        load_tokenizer(str(tmp_path / "missing"))


@pytest.mark.parametrize("damage", ["truncated", "random", "nan"])
def test_a_tokenizer_whose_weights_cannot_be_used_is_a_one_line_refusal(tmp_path, tokenizer, damage):
    model, folder = tokenizer
    broken = shutil.copytree(folder, tmp_path / "broken")
    weights = broken / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "random":
        weights.write_bytes(np.random.default_rng(0).bytes(4096))
    else:  # a tokenizer whose training diverged: it would encode every image to garbage codes
        state = {k: v.clone() for k, v in model.state_dict().items()}
        next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
        save_file(state, str(weights))
    message = {"nan": "holds NaN or infinite weights"}.get(damage, "its weights cannot be read")
    with pytest.raises(ValueError, match=message) as error:
        load_tokenizer(str(broken))
    assert "\n" not in str(error.value)
