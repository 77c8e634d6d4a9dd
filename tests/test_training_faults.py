"""Fault injection for pixelgpt.training: runs killed (SIGKILL) at each phase of a checkpoint write, interrupted
(SIGINT), run twice at once on one folder, pointed at a folder they cannot write, or diverging. After each, nothing
is lost: a complete checkpoint remains and resuming from it ends with the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from test_training import TINY, assert_same_weights, weights

from pixelgpt import training
from pixelgpt.utils import TrainingError

from conftest import one_cpu_thread

pytestmark = pytest.mark.slow
STEPS = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--eval_steps", "100", "--sample_steps", "100"]

one_thread = pytest.fixture(scope="module", autouse=True)(one_cpu_thread)


def argv(out, limit):
    return ["--output_dir", str(out), *TINY, *STEPS, "--checkpoints_total_limit", str(limit)]


def train_here(args):
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return training.main(training.parse_args(args))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every resumed run must end up equal to."""
    out = tmp_path_factory.mktemp("straight") / "out"
    train_here(argv(out, 2))
    return weights(out)


# `writing` dies inside the save of checkpoint-4 (files half there, still under the temporary name), `renamed` right
# after checkpoint-4 is renamed into place, before old checkpoints are rotated out, `rotating` at the first deletion
# (checkpoint-4 with limit 1, checkpoint-6 with limit 2) after the old checkpoint was moved aside, before it is gone.
KILL_AT = """
    import os, signal, shutil, sys
    from pathlib import Path
    from accelerate import Accelerator
    from pixelgpt import training

    phase = {phase!r}
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    save_state, replace, rmtree = Accelerator.save_state, os.replace, shutil.rmtree
    def dying_save(self, output_dir=None, **kwargs):
        if phase == "writing" and "checkpoint-4" in str(output_dir):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
            die()
        return save_state(self, output_dir, **kwargs)
    def dying_replace(src, dst):
        replace(src, dst)
        if phase == "renamed" and str(dst).endswith("checkpoint-4"):
            die()
    def dying_rmtree(path, *args, **kwargs):
        if phase == "rotating" and str(path).endswith(".old"):
            die()
        return rmtree(path, *args, **kwargs)
    Accelerator.save_state = dying_save
    training.os.replace = dying_replace
    training.shutil.rmtree = dying_rmtree
    training.main(training.parse_args(sys.argv[1:]))
"""


@pytest.mark.parametrize("limit", [1, 2, 0], ids=["limit1", "limit2", "keep_all"])
@pytest.mark.parametrize("phase", ["writing", "renamed", "rotating"])
def test_sigkill_at_each_phase_of_a_checkpoint_write_loses_nothing(tmp_path, straight, phase, limit):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_AT.format(phase=phase)), *argv(out, limit)],
                            capture_output=True, text=True, timeout=300)
    if phase == "rotating" and limit == 0:
        assert result.returncode == 0, result.stderr[-2000:]  # keeping every checkpoint, nothing is ever deleted
        return
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    complete = [p.name for p in training.list_checkpoints(out)]
    assert complete, "a kill during a checkpoint write must leave a complete checkpoint"
    for name in complete:  # every listed checkpoint is whole
        assert json.loads((out / name / "pixelgpt_step.json").read_text())["step"] == int(name.split("-")[1])
        load_file(str(out / name / "model.safetensors"))
    train_here(argv(out, limit) + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(weights(out), straight)
    leftovers = [p.name for p in out.iterdir() if p.suffix in (".tmp", ".old") or p.name == training.LOCK_NAME]
    assert leftovers == []
    expected = {1: ["checkpoint-6"], 2: ["checkpoint-4", "checkpoint-6"],
                0: ["checkpoint-2", "checkpoint-4", "checkpoint-6"]}[limit]
    assert [p.name for p in training.list_checkpoints(out)] == expected


INTERRUPT_AT_STEP_3 = """
    import os, signal, sys
    from pixelgpt import training
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started; a background job of a
    # non-interactive shell (nohup ... &, some CI runners) inherits it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    evaluate = training.task_loss
    calls = []
    def interrupted(*args, reduction="mean", **kwargs):
        if reduction == "mean":
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 3
        return evaluate(*args, reduction=reduction, **kwargs)
    training.task_loss = interrupted
    training.main(training.parse_args(sys.argv[1:]))
"""


def test_sigint_mid_run_releases_the_folder_and_resumes_to_the_same_weights(tmp_path, straight):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(INTERRUPT_AT_STEP_3), *argv(out, 2)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr, result.stderr[-2000:]
    assert not (out / training.LOCK_NAME).exists()  # the lock went with the run
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2"]
    train_here(argv(out, 2) + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(weights(out), straight)


PAUSE_AT_STEP_2 = """
    import sys, time
    from pathlib import Path
    from pixelgpt import training
    save = training.save_checkpoint
    def paused(accelerator, args, step, ema, settings, data_state):
        path = save(accelerator, args, step, ema, settings, data_state)
        if step == 2:
            Path(sys.argv[1]).touch()  # tell the test we hold the folder
            while not Path(sys.argv[2]).exists():
                time.sleep(0.05)
        return path
    training.save_checkpoint = paused
    training.main(training.parse_args(sys.argv[3:]))
"""


def test_a_second_run_on_the_same_folder_is_refused_and_the_first_finishes(tmp_path, straight):
    out, holding, release = tmp_path / "out", tmp_path / "holding", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PAUSE_AT_STEP_2), str(holding), str(release),
                              *argv(out, 2)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not holding.exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not reach step 2"
            time.sleep(0.05)
        with pytest.raises(TrainingError, match=rf"in use by another training run \(pid {first.pid} on "):
            train_here(argv(out, 2))
        assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2"]  # the second deleted nothing
    finally:
        release.touch()
        _, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-2000:]
    assert_same_weights(weights(out), straight)
    assert not (out / training.LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / training.LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename}))
    train_here(argv(out, 2)[:-2] + ["--max_train_steps", "1"])
    assert (out / "model.safetensors").is_file() and not (out / training.LOCK_NAME).exists()


UNWRITABLE = """
    import os, sys
    from pixelgpt import training  # imported as root: this Python's own files may be out of nobody's reach
    from pixelgpt.utils import TrainingError
    args = training.parse_args(sys.argv[1:])
    os.setgid(65534); os.setuid(65534)  # nobody: file modes apply again (root ignores them)
    try:
        training.main(args)
    except TrainingError as err:
        print("REFUSED:", err)
"""


def test_an_unwritable_output_folder_is_refused_before_any_training(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="pixelgpt-ro-"))  # not under pytest's private tmp: nobody must reach it
    try:
        base.chmod(0o755)
        out = base / "locked"
        out.mkdir(mode=0o555)
        out.chmod(0o555)
        if os.geteuid() == 0:
            result = subprocess.run([sys.executable, "-c", textwrap.dedent(UNWRITABLE), *argv(out, 2)],
                                    capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "HOME": str(base), "HF_HOME": str(base / "hf")})
            assert "REFUSED:" in result.stdout, result.stderr[-2000:]
            assert "Checking train images" not in result.stderr  # refused before the data was even read
            message = result.stdout
        else:
            with pytest.raises(TrainingError) as err:
                train_here(argv(out, 2))
            message = str(err.value)
        assert f"--output_dir {out} cannot be written" in message and "nothing was trained" in message
        assert list(out.iterdir()) == []
    finally:
        os.chmod(base / "locked", 0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_too_little_free_space_for_one_checkpoint_is_refused_up_front(tmp_path):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    with pytest.raises(TrainingError, match=r"has 1000 bytes free; one checkpoint needs about \d+\.\d KiB"), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
        train_here(argv(tmp_path / "out", 2))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"Training diverged at step \d+: the loss is nan.*last good checkpoint "
                                            r"is checkpoint-2"):
        train_here(argv(out, 2) + ["--learning_rate", "1e30"])
    assert not (out / "model.safetensors").exists()  # no NaN model as the result
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2"]
    for tensor in load_file(str(out / "checkpoint-2" / "model.safetensors")).values():
        assert tensor.isfinite().all()
    assert not (out / training.LOCK_NAME).exists()


def test_an_empty_lock_left_by_a_kill_is_taken_over_once_it_is_old(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / training.LOCK_NAME
    lock.touch()  # killed between creating the lock and writing its owner
    with pytest.raises(TrainingError, match=r"in use by another training run \(pid \? on \?"):
        train_here(argv(out, 2)[:-2] + ["--max_train_steps", "1"])  # a fresh empty lock may be a run starting now
    os.utime(lock, (time.time() - 60, time.time() - 60))
    train_here(argv(out, 2)[:-2] + ["--max_train_steps", "1"])
    assert (out / "model.safetensors").is_file() and not lock.exists()

