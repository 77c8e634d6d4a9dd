"""pixelgpt.training.batches: the training batches of a run (prepared and streamed), images decoded only as batches
are made, bad images (stop the run, or skipped and counted once), and the place in the data that a checkpoint saves
and a resumed run continues from. On small image folders, without a model."""

import numpy as np
import pytest
import torch
from accelerate.utils import DataLoaderConfiguration
from training_helpers import TINY, fresh_accelerator, image_folder_fixture, launch_two_cpu_processes, make_folder

from pixelgpt import training
from pixelgpt.training import data as data_module
from pixelgpt.training.batches import TrainingBatches
from pixelgpt.training.data import load_splits, make_collate, write_skipped
from pixelgpt.training.pixelgpt import build_config, build_processor
from pixelgpt.utils import TrainingError

from conftest import REPO_ROOT


@pytest.fixture
def accelerator():
    """As `launch` makes it: the seedable sampler makes a pass's order a function of (seed, pass)."""
    yield from fresh_accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=0))


folder = image_folder_fixture()  # 12 good 12x12 images in two class folders
bad_folder = image_folder_fixture(bad=True)  # and 3 bad ones (unreadable, truncated, 5x5)


def parse(tmp_path, root, *argv):
    return training.parse_args(["--output_dir", str(tmp_path / "out"), "--train_data_dir", str(root), "--resolution",
                                "8", "--train_batch_size", "2", "--max_train_steps", "100", *argv])


def make_batches(accelerator, args, label_column=None):
    """The run's batches as the PixelGPT trainer makes them (its processor, config and collate function)."""
    train, _, _ = load_splits(args.data, args.run.seed)
    processor = build_processor(args, None)
    config = build_config(args, processor, None, 2 if label_column else 0, None)
    collate = make_collate(processor, config, args.data, label_column)
    return TrainingBatches(args.data, args.run, accelerator, train, collate)


def take(batches, count: int) -> list:
    out = []
    for batch in batches:
        out.append(batch)
        if len(out) == count:
            return out
    return out


def read_all(batches, passes: int) -> list:
    """Every batch of the first `passes` passes."""
    out = []
    for batch in batches:
        if batches.epoch == passes:
            break
        out.append(batch)
    return out


def test_a_bad_training_image_stops_the_run_naming_the_file_when_it_is_read(tmp_path, accelerator, bad_folder):
    args = parse(tmp_path, bad_folder, "--eval_split", "train")
    with pytest.raises(ValueError, match=r"Bad training image: \S*(broken|truncated|tiny)\.png") as info:
        read_all(make_batches(accelerator, args), passes=1)
    # No checkpoint was written yet: the advice is to run again, not to resume.
    assert "--skip_bad_images" in str(info.value) and "then start the run again" in str(info.value)
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"then continue from checkpoint-4 with --resume_from_checkpoint latest"):
        read_all(make_batches(accelerator, args), passes=1)


def test_skipped_bad_images_are_counted_once_over_passes_and_listed(tmp_path, accelerator, bad_folder, caplog):
    args = parse(tmp_path, bad_folder, "--eval_split", "train", "--skip_bad_images")
    batches = make_batches(accelerator, args)
    batch_rows = [len(batch["input_ids"]) for batch in read_all(batches, passes=2)]
    # 15 images a pass in 7 batches of 2: a bad image is left out of its batch (a batch left empty is skipped).
    assert len(batch_rows) <= 14 and set(batch_rows) <= {1, 2} and sum(batch_rows) >= 2 * (14 - 3), batch_rows
    skipped = batches.all_bad_images()
    assert len(skipped) == 3 and batches.state()["bad_images"] == skipped  # each met twice, counted once
    assert "tiny.png: 5x5 is smaller than --resolution 8" in "\n".join(skipped)
    write_skipped(tmp_path / "out", "train", skipped)
    listed = (tmp_path / "out" / "skipped_train_images.txt").read_text().splitlines()
    assert sorted(line.split(":")[0].rsplit("/", 1)[-1] for line in listed) == ["broken.png", "tiny.png",
                                                                                 "truncated.png"]
    assert "Skipped 3 train images" in caplog.text


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streamed"])
def test_skipping_every_training_image_stops_instead_of_looping(tmp_path, accelerator, streaming):
    root = tmp_path / "imgs"
    make_folder(root / "test", sizes=((12, 12),) * 2)  # good held-out images; every training image is bad
    for c in ("cats", "dogs"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            (root / "train" / c / f"bad{i}.png").write_bytes(b"not an image")
    args = parse(tmp_path, root, "--skip_bad_images", *(["--streaming"] if streaming else []))
    with pytest.raises(ValueError, match=r"holds no usable image: 8 bad ones were skipped, e\.g\. \S*bad"):
        take(make_batches(accelerator, args), 50)


def test_fewer_images_than_one_batch_are_refused(tmp_path, accelerator, folder):
    args = parse(tmp_path, folder, "--train_batch_size", "32")
    with pytest.raises(ValueError, match=r"\d+ training images are fewer than one batch of 32"):
        make_batches(accelerator, args)
    # A stream has no length: a pass that reads no batch (every image held out) stops the run; a partial batch
    # would have been trained on, so the message says "no image", not "fewer than one batch".
    streamed = parse(tmp_path, folder, "--streaming", "--max_eval_samples", "12")
    with pytest.raises(ValueError, match=r"^The training stream holds no image once the first 12 "
                                         r"\(--max_eval_samples\) are held out\. Add images or lower "
                                         r"--max_eval_samples\.$"):
        take(make_batches(accelerator, streamed), 1)


@pytest.mark.slow
def test_a_process_whose_part_of_the_stream_is_empty_stops_every_process_with_one_line(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 3)  # 6 images: 5 held out, 1 to train on
    result = launch_two_cpu_processes(REPO_ROOT / "examples" / "train.py", "--output_dir", tmp_path / "out", *TINY,
                                      "--train_data_dir", root, "--streaming", "--max_eval_samples", "5",
                                      "--train_batch_size", "4", "--max_train_steps", "2", check=False)
    assert result.returncode == 1
    # Process 0 got the one image (a partial batch trains) and waited for process 1 in its first batch: both
    # agreed, then each printed the same line. What remains is torchrun's summary of the two failed processes.
    # The two processes write to one stderr, so their lines may interleave (seen once in CI): the message must be
    # there whole at least once, and there must be exactly two messages.
    message = ("train.py: The training stream's part for process 1 of 2 holds no image once the first 5 "
               "(--max_eval_samples) are held out. Use fewer processes, more data files or images (a stream is "
               "split between processes by whole files when their number divides by the process count, else "
               "image by image), or leave out --streaming.")
    assert message in result.stderr and result.stderr.count("train.py: ") == 2, result.stderr[-3000:]
    assert "[rank0]:" not in result.stderr and "[rank1]:" not in result.stderr  # no traceback of either process
    assert "Connection closed by peer" not in result.stderr and result.stderr.count("Traceback") == 1
    assert "ChildFailedError" in result.stderr


def test_images_are_decoded_only_as_batches_are_made(tmp_path, accelerator, monkeypatch):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 20)
    opened = []
    real = data_module.open_image
    monkeypatch.setattr(data_module, "open_image", lambda value, where: opened.append(value) or real(value, where))
    args = parse(tmp_path, root, "--eval_split", "train", "--max_eval_samples", "2")
    batches = make_batches(accelerator, args)
    assert opened == []  # splitting, selecting and preparing the data decoded nothing
    take(batches, 1)
    # 40 images: the 2 of the first batch and the 2 of the next one (accelerate reads a batch ahead).
    assert len({value["path"] for value in opened}) <= 4, opened


def input_ids(batches) -> list:
    return [batch["input_ids"] for batch in batches]


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streamed"])
def test_a_restored_place_continues_with_the_batches_an_uninterrupted_run_reads(tmp_path, accelerator, folder,
                                                                                 streaming):
    # 12 images in batches of 2: passes of 6 batches (a stream shuffled through a buffer, reshuffled each pass).
    args = parse(tmp_path, folder, "--eval_split", "train", *(["--streaming", "--shuffle_buffer_size", "4"] if
                                                              streaming else []))
    straight = make_batches(accelerator, args)
    first = take(straight, 8)  # into the second pass
    saved = straight.state()
    assert saved == {"positions": [[1, 2]], "bad_images": []}
    rest = input_ids(take(straight, 6))
    resumed = make_batches(accelerator, args)
    resumed.restore(saved, step=8)
    assert all(torch.equal(a, b) for a, b in zip(input_ids(take(resumed, 6)), rest, strict=True))
    assert not torch.equal(first[0]["input_ids"], first[6]["input_ids"])  # each pass is another order
    if streaming:
        return
    older = make_batches(accelerator, args)  # a checkpoint that gives only its step
    older.restore(None, step=8)
    assert (older.epoch, older.position) == (1, 2)
    assert all(torch.equal(a, b) for a, b in zip(input_ids(take(older, 6)), rest, strict=True))


def test_a_stream_resumes_only_where_its_checkpoint_says_with_as_many_processes(tmp_path, accelerator, folder):
    args = parse(tmp_path, folder, "--streaming")
    batches = make_batches(accelerator, args)
    with pytest.raises(TrainingError, match="does not record where the stream was; resume it without --streaming"):
        batches.restore(None, step=8)
    with pytest.raises(TrainingError, match="written by 2 processes.*resume it with 2 processes, not 1"):
        batches.restore({"positions": [[1, 2], [1, 2]], "bad_images": []}, step=8)


def test_a_source_column_pairs_each_target_with_its_own_source(tmp_path, accelerator, monkeypatch):
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(1)
    targets = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(12)]
    rows = {"image": targets, "sketch": [255 - t for t in targets]}
    features = Features({"image": ImageFeature(), "sketch": ImageFeature()})
    dataset = DatasetDict(train=Dataset.from_dict(rows, features=features),
                          test=Dataset.from_dict(rows, features=features))
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: dataset)
    args = training.parse_args(["--output_dir", str(tmp_path / "out"), "--dataset_name", "x/y", "--task", "translate",
                                "--source_column", "sketch", "--quantization", "gray8", "--resolution", "8",
                                "--train_batch_size", "4"])
    for batch in take(make_batches(accelerator, args), 3):  # shuffled rows: each target meets its own source
        assert torch.equal(batch["condition_ids"], 255 - batch["input_ids"][:, 1:])


def test_labels_become_class_tokens(tmp_path, accelerator, folder):
    args = parse(tmp_path, folder, "--class_conditional")
    [batch] = take(make_batches(accelerator, args, label_column="label"), 1)
    config = build_config(args, build_processor(args, None), None, 2, None)
    assert set(batch["input_ids"][:, 0].tolist()) <= {config.class_token_id(0), config.class_token_id(1)}
