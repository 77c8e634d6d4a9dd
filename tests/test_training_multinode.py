"""Training on several machines (`accelerate launch --num_machines 2 --machine_rank R --main_process_ip ...`), as
docs/training.md documents it: two "machines" on localhost, one CPU process each (gloo), each started with its own
launch command, against the one-machine run of two processes. Both machines write one --output_dir (a shared
filesystem); machines with a folder each are refused at the start (pixelgpt.training.workspace). Slow: every test
starts processes."""

import json
import textwrap

import numpy as np
import pytest
from training_helpers import (
    TINY,
    assert_same_weights,
    checkpoint_names,
    launch_two_cpu_machines,
    launch_two_cpu_processes,
    make_folder,
    weights,
)

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
TRAIN, TRAIN_TOKENIZER = REPO_ROOT / "examples" / "train.py", REPO_ROOT / "examples" / "train_tokenizer.py"
QUIET = ["--eval_steps", "100", "--sample_steps", "100"]  # no evaluation or grid before the end


def results(folder) -> dict:
    figures = json.loads((folder / "eval_results.json").read_text())
    figures.pop("train_seconds")
    return figures


def assert_two_machines_match_one(tmp_path, script, *argv):
    """`script` on one machine (2 processes) and on two machines (1 process each): the same weights, bit for bit
    (the same gloo all-reduce of two ranks, so the same float sums), and the same final figures."""
    launch_two_cpu_processes(script, "--output_dir", tmp_path / "one", *argv)
    launch_two_cpu_machines(script, "--output_dir", tmp_path / "two", *argv)
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"))
    assert results(tmp_path / "two") == results(tmp_path / "one")


def test_the_pixel_model_on_two_machines_equals_two_processes_on_one(tmp_path):
    assert_two_machines_match_one(tmp_path, TRAIN, *TINY, *QUIET, "--train_batch_size", "4", "--max_train_steps", "4")
    assert (tmp_path / "two" / "samples.png").exists() and (tmp_path / "two" / "README.md").exists()


def test_the_tokenizer_stage_on_two_machines_equals_two_processes_on_one(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((20, 20),) * 8)  # 16 colour images, cropped to 16
    assert_two_machines_match_one(tmp_path, TRAIN_TOKENIZER, "--train_data_dir", root, "--resolution", "16",
                                  "--base_channels", "8", "--fsq_levels", "3", "3", "3", "--train_batch_size", "2",
                                  "--eval_batch_size", "4", "--lr_warmup_steps", "1", "--max_eval_samples", "4",
                                  "--max_train_steps", "3", "--eval_steps", "100")


def parquet_shards(root, files=2, rows=12):
    """A local dataset of `files` parquet shards of `rows` random 12x12 colour images each."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        images = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(rows)]
        Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()})).to_parquet(
            str(root / f"train-{i:05d}-of-{files:05d}.parquet"))
    return root


CRASH = """
    import runpy, sys
    sys.path.insert(0, {tests!r})
    from training_helpers import crash_after_saving
    from pixelgpt.training import loop

    loop.save_checkpoint = crash_after_saving(loop.save_checkpoint, at_step={step})  # on every machine
    runpy.run_path({script!r}, run_name="__main__")
"""


def test_a_stream_on_two_machines_killed_and_resumed_equals_two_processes_on_one(tmp_path):
    """Both halves of the two-machine run (before and after the kill) against the uninterrupted one-machine run."""
    data = parquet_shards(tmp_path / "shards")
    # Two shards, two processes: each reads a whole file. The first 4 images are held out, so process 0 trains on
    # 8 images (2 batches a pass) and process 1 on 12 (3 batches): step 3 is in process 0's second pass.
    common = [*TINY, *QUIET, "--dataset_name", data, "--streaming", "--shuffle_buffer_size", "8", "--max_eval_samples",
              "4", "--train_batch_size", "4", "--max_train_steps", "6", "--checkpointing_steps", "3"]
    launch_two_cpu_processes(TRAIN, "--output_dir", tmp_path / "one", *common)
    crash = tmp_path / "crash_train.py"
    crash.write_text(textwrap.dedent(CRASH.format(tests=str(REPO_ROOT / "tests"), step=3, script=str(TRAIN))))
    killed = launch_two_cpu_machines(crash, "--output_dir", tmp_path / "two", *common, check=False)
    for result in killed:
        assert result.returncode != 0 and "simulated interruption after checkpoint-3" in result.stderr
    saved = json.loads((tmp_path / "two" / "checkpoint-3" / "pixelgpt_step.json").read_text())
    assert saved["data"]["positions"] == [[1, 1], [0, 3]]  # each machine's place in its own part
    launch_two_cpu_machines(TRAIN, "--output_dir", tmp_path / "two", *common, "--resume_from_checkpoint", "latest")
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"))
    assert checkpoint_names(tmp_path / "two") == ["checkpoint-3", "checkpoint-6"]


def test_machines_with_an_output_folder_each_are_refused_before_training(tmp_path):
    """Each process writes its part of every checkpoint into --output_dir: with a folder per machine, machine 0's
    checkpoints would lack machine 1's part and machine 1 would keep only unfinished `.tmp` folders."""
    folders = (("--output_dir", tmp_path / "m0"), ("--output_dir", tmp_path / "m1"))
    refused = launch_two_cpu_machines(TRAIN, *TINY, "--max_train_steps", "2", per_machine=folders, check=False)
    for result in refused:
        assert result.returncode != 0
        [line] = [line for line in result.stderr.splitlines() if line.startswith("train.py: ")]
        assert line.startswith(f"train.py: --output_dir {tmp_path / 'm'}") and \
            "is not one folder shared by every machine: process 1 of 2 does not see the lock" in line and \
            "give every machine the same path on a filesystem they all share. Nothing was trained." in line
    assert not (tmp_path / "m1").exists() and [p.name for p in (tmp_path / "m0").iterdir()] == []


SLOW_SAVE = """
    import runpy, time
    from accelerate import accelerator

    save = accelerator.save_accelerator_state

    def late_on_process_1(output_dir, *args, **kwargs):  # machine 1 writes its part of the checkpoint late
        if args[4] == 1:  # process_index
            time.sleep(2)
        return save(output_dir, *args, **kwargs)

    accelerator.save_accelerator_state = late_on_process_1
    runpy.run_path({script!r}, run_name="__main__")
"""


def test_a_checkpoint_holds_every_machines_part_even_when_one_writes_late(tmp_path):
    """Without that wait, machine 1 finds the folder it is writing into renamed under it and the run stops ("Parent
    directory .../checkpoint-2.tmp does not exist"), or its part is left behind in a new checkpoint-2.tmp and the
    checkpoint resumes without its random state. Seen unprompted in about 1 two-machine run of 5 that saved."""
    script = tmp_path / "slow_save.py"
    script.write_text(textwrap.dedent(SLOW_SAVE.format(script=str(TRAIN))))
    launch_two_cpu_machines(script, "--output_dir", tmp_path / "out", *TINY, *QUIET, "--max_train_steps", "2",
                            "--checkpointing_steps", "2")
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (tmp_path / "out" /
                                                                                "checkpoint-2").iterdir()}
