"""Fault injection for pixelgpt.training, end to end, in fresh interpreters: runs killed (SIGKILL) during a
checkpoint write and interrupted (SIGINT). After each, nothing is lost: a complete checkpoint remains, the next run
takes over the dead run's lock, and resuming ends with the weights of an uninterrupted run. Each phase of a save,
with each rotation limit, is tested on `save_checkpoint` itself (test_training_checkpoints.py, milliseconds); the
lock, the unwritable folder, the disk space and divergence in test_training_workspace.py, test_training_loop.py and
test_training.py."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file
from training_helpers import TINY, assert_same_weights, checkpoint_names, reset_accelerate, weights

from pixelgpt import training
from pixelgpt.training.workspace import LOCK_NAME

from conftest import one_cpu_thread

pytestmark = pytest.mark.slow
STEPS = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--eval_steps", "100", "--sample_steps", "100"]

one_thread = pytest.fixture(scope="module", autouse=True)(one_cpu_thread)


def argv(out, limit):
    return ["--output_dir", str(out), *TINY, *STEPS, "--checkpoints_total_limit", str(limit)]


def train_here(args):
    reset_accelerate()
    try:
        return training.main(training.parse_args(args))
    finally:
        reset_accelerate()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every resumed run must end up equal to."""
    out = tmp_path_factory.mktemp("straight") / "out"
    train_here(argv(out, 2))
    return weights(out)


# `writing` dies inside the save of checkpoint-4 (files half there, still under the temporary name); `rotating` at
# the first deletion (checkpoint-4 with limit 1) after the old checkpoint was moved aside, before it is gone.
KILL_AT = """
    import os, signal, shutil, sys
    from pathlib import Path
    from accelerate import Accelerator
    from pixelgpt import training
    from pixelgpt.training import checkpoints

    phase = {phase!r}
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    save_state, rmtree = Accelerator.save_state, shutil.rmtree
    def dying_save(self, output_dir=None, **kwargs):
        if phase == "writing" and "checkpoint-4" in str(output_dir):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
            die()
        return save_state(self, output_dir, **kwargs)
    def dying_rmtree(path, *args, **kwargs):
        if phase == "rotating" and str(path).endswith(".old"):
            die()
        return rmtree(path, *args, **kwargs)
    Accelerator.save_state = dying_save
    checkpoints.shutil.rmtree = dying_rmtree
    training.main(training.parse_args(sys.argv[1:]))
"""


@pytest.mark.parametrize("phase, limit, left, expected", [
    ("writing", 2, ["checkpoint-2"], ["checkpoint-4", "checkpoint-6"]),
    ("rotating", 1, ["checkpoint-4"], ["checkpoint-6"]),
], ids=["writing-limit2", "rotating-limit1"])
def test_sigkill_during_a_checkpoint_write_loses_nothing(tmp_path, straight, phase, limit, left, expected):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_AT.format(phase=phase)), *argv(out, limit)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert checkpoint_names(out) == left, "a kill during a checkpoint write must leave a complete checkpoint"
    for name in left:  # every listed checkpoint is whole
        assert json.loads((out / name / "pixelgpt_step.json").read_text())["step"] == int(name.split("-")[1])
        load_file(str(out / name / "model.safetensors"))
    if phase == "writing":  # the half-written checkpoint is there, under a name `latest` never picks
        assert (out / "checkpoint-4.tmp").is_dir() and not (out / "checkpoint-4").exists()
    assert (out / LOCK_NAME).exists()  # a SIGKILL runs no clean-up: the next run takes over the dead run's lock
    train_here(argv(out, limit) + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(weights(out), straight)
    leftovers = [p.name for p in out.iterdir() if p.suffix in (".tmp", ".old") or p.name == LOCK_NAME]
    assert leftovers == []
    assert checkpoint_names(out) == expected


INTERRUPT_AT_STEP_3 = """
    import os, signal, sys
    from pixelgpt import training
    from pixelgpt.training import pixelgpt
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started; a background job of a
    # non-interactive shell (nohup ... &, some CI runners) inherits it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    task_loss = pixelgpt.task_loss
    calls = []
    def interrupted(*args, reduction="mean", **kwargs):
        if reduction == "mean":
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 3
        return task_loss(*args, reduction=reduction, **kwargs)
    pixelgpt.task_loss = interrupted
    training.main(training.parse_args(sys.argv[1:]))
"""


def test_sigint_mid_run_releases_the_folder_and_resumes_to_the_same_weights(tmp_path, straight):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(INTERRUPT_AT_STEP_3), *argv(out, 2)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr, result.stderr[-2000:]
    assert not (out / LOCK_NAME).exists()  # the lock went with the run
    assert checkpoint_names(out) == ["checkpoint-2"]
    train_here(argv(out, 2) + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(weights(out), straight)
