"""What the training tests share (pixelgpt.training): tiny settings, a run, weight comparisons, image folders with
and without bad files, a prepared accelerator, a fake Hub and 2-process launches (on one machine or two). Not a test
module."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from safetensors.torch import load_file

from pixelgpt import training
from pixelgpt.training.checkpoints import list_checkpoints
from pixelgpt.training.workspace import LOCK_NAME

TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--resolution", "8",
        "--max_train_samples", "64", "--max_eval_samples", "32", "--train_batch_size", "8", "--eval_batch_size", "16",
        "--num_samples", "4", "--lr_warmup_steps", "2", "--quality_samples", "8"]


def reset_accelerate():
    AcceleratorState._reset_state(reset_partial_state=True)


def fresh_accelerate_state():
    """accelerate keeps one state per process; each run (or accelerator) of a test stands for a separate process.
    Use as `fresh_state = pytest.fixture(autouse=True)(fresh_accelerate_state)`."""
    reset_accelerate()
    yield
    reset_accelerate()


def train(tmp_path, *extra, name="out") -> Path:
    """A tiny PixelGPT run (TINY, then `extra`) into tmp_path / name."""
    reset_accelerate()
    training.main(training.parse_args(["--output_dir", str(tmp_path / name), *TINY, *extra]))
    return tmp_path / name


def checkpoint_names(folder) -> list:
    """The complete checkpoints in `folder`, oldest first (what `--resume_from_checkpoint latest` chooses from)."""
    return [p.name for p in list_checkpoints(folder)]


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a, b, **tolerance):
    assert a.keys() == b.keys()
    for key in a:
        difference = (a[key].double() - b[key].double()).abs().max().item()
        torch.testing.assert_close(a[key], b[key], **(tolerance or dict(rtol=0, atol=0)),
                                   msg=f"{key}: largest difference {difference:.3g}")


def crash_after_saving(save, at_step=None):
    """A stand-in for `save_checkpoint` (patched at `pixelgpt.training.loop.save_checkpoint`, where the loop looks
    it up) that saves, then interrupts the run: after the first checkpoint, or after the one of `at_step`."""
    def save_then_crash(accelerator, run, step, ema, settings, data_state):
        path = save(accelerator, run, step, ema, settings, data_state)
        if at_step is None or step == at_step:
            raise KeyboardInterrupt(f"simulated interruption after {path.name}")
        return path

    return save_then_crash


def make_folder(root, sizes=((12, 12),) * 6, classes=("cats", "dogs")):
    """Random colour PNGs in one sub-folder per class."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def add_bad_images(root):
    """An unreadable, a truncated and a too-small (5x5) image."""
    (root / "cats" / "broken.png").write_bytes(b"not an image at all")
    data = (root / "dogs" / "0.png").read_bytes()
    (root / "dogs" / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (5, 5)).save(root / "dogs" / "tiny.png")
    return root


def image_folder_fixture(sizes=((12, 12),) * 6, bad=False):
    """A module-scoped fixture: a `make_folder` of `sizes` (with `add_bad_images` if `bad`), made once per module."""
    @pytest.fixture(scope="module")
    def folder(tmp_path_factory):
        root = make_folder(tmp_path_factory.mktemp("imgs") / "imgs", sizes)
        return add_bad_images(root) if bad else root

    return folder


def fresh_accelerator(**kwargs):
    """A fresh CPU `Accelerator(**kwargs)` with accelerate's state reset around it (the logger and the collectives
    need one). Use as `accelerator = pytest.fixture(fresh_accelerator)`."""
    reset_accelerate()
    yield Accelerator(cpu=True, **kwargs)
    reset_accelerate()


def prepared_accelerator():
    """A fresh CPU accelerator with a tiny prepared model (what save_state / load_state need). Use as
    `accelerator = pytest.fixture(prepared_accelerator)`."""
    for accelerator in fresh_accelerator():
        torch.manual_seed(0)
        accelerator.prepare(torch.nn.Linear(3, 2))
        yield accelerator


@contextmanager
def fake_hub(repo_id):
    """HfApi's create_repo (a mock, yielded) and upload_folder replaced: `calls` gets (repo id, the files
    huggingface_hub would send, token, commit message) of each upload."""
    calls = []

    def fake_upload_folder(self, *, repo_id, folder_path, commit_message=None, ignore_patterns=None, **kwargs):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        calls.append((repo_id, set(filter_repo_objects(files, ignore_patterns=ignore_patterns)), self.token,
                      commit_message))

    with mock.patch.object(HfApi, "create_repo", return_value=mock.MagicMock(repo_id=repo_id)) as create, \
            mock.patch.object(HfApi, "upload_folder", fake_upload_folder):
        yield calls, create


def assert_pushed(out, calls, repo_id, token, files):
    """One upload to `repo_id` with `token`, of the saved folder `out` (at least `files`): without its checkpoints
    (there are some), intermediate grids, logs, or the lock (it names this machine and is held during the push);
    the token is not in the card."""
    [(pushed_to, uploaded, used, _)] = calls
    assert pushed_to == repo_id and used == token
    assert set(files) <= uploaded
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())  # present locally, never uploaded:
    assert not [n for n in uploaded if n.startswith(("checkpoint-", "samples/", "logs/"))]
    assert LOCK_NAME not in uploaded and token not in (out / "README.md").read_text()


def free_port() -> int:
    """A port nobody listens on now, so a leftover or parallel run cannot block the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_cpu_launch(script, argv, *topology) -> list:
    """The `accelerate launch` command of `script` on 2 CPU processes in all (gloo), as a user types it."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *topology,
            "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *map(str, argv)]


def run_launches(commands, timeout=240, grace=30) -> list:
    """Start the `accelerate launch` commands together (each a torchrun agent with its workers) and wait for all,
    `timeout` seconds at most; once one fails, the others get `grace` seconds to fail too (a peer gone) before they
    are stopped: SIGTERM to the agent, which stops its workers, then SIGKILL. Returns their CompletedProcesses; a
    launch still running at the deadline fails the test with what every launch printed."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as logs:
        outputs = [(Path(logs, f"{i}.out"), Path(logs, f"{i}.err")) for i in range(len(commands))]
        running = []
        try:
            for command, (out, err) in zip(commands, outputs):
                with out.open("w") as stdout, err.open("w") as stderr:  # the child keeps its own copies
                    running.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env))
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in running) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in running):  # one failed: the others end soon, or hang
                    deadline = min(deadline, time.monotonic() + grace)
                time.sleep(0.2)
            hung = [i for i, p in enumerate(running) if p.poll() is None]
        finally:
            for process in running:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        results = [subprocess.CompletedProcess(command, process.returncode, out.read_text(), err.read_text())
                   for command, process, (out, err) in zip(commands, running, outputs)]
    if hung:  # a hung rendezvous or collective: fail with what the ranks printed
        raise AssertionError(f"launch {hung} hung:\n" + "\n".join(f"--- launch {i}:\n{printed(r)}"
                                                                 for i, r in enumerate(results)))
    return results


def printed(result, size=4000) -> str:
    """The end of what a launch printed to stderr, without progress bars."""
    return "\n".join(line for line in result.stderr.splitlines() if "it/s]" not in line)[-size:]


def launch_two_cpu_processes(script, *argv, check=True):
    """`accelerate launch` of `script` with 2 CPU processes (gloo) on one machine, failing with what the ranks
    printed (unless not `check`)."""
    [result] = run_launches([accelerate_cpu_launch(script, argv, "--num_machines", "1", "--main_process_port",
                                                   str(free_port()))])
    assert result.returncode == 0 or not check, printed(result)
    return result


def launch_two_cpu_machines(script, *argv, per_machine=((), ()), check=True):
    """`accelerate launch` of `script` as two machines of one CPU process each, on localhost: one launch per
    machine (`--machine_rank` 0 and 1, `per_machine[rank]` appended to `argv`), started together and failing with
    what the machines printed (unless not `check`). Returns both CompletedProcesses, machine 0 first."""
    port = str(free_port())
    results = run_launches([accelerate_cpu_launch(script, [*argv, *per_machine[rank]], "--num_machines", "2",
                                                  "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                                                  "--main_process_port", port) for rank in (0, 1)])
    assert not check or all(r.returncode == 0 for r in results), "\n".join(
        f"--- machine {rank} (rc {r.returncode}):\n{printed(r)}" for rank, r in enumerate(results))
    return results
