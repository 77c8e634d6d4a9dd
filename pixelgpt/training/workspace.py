"""The run's workspace: the output folder (writable, room for a checkpoint, locked for one run) and the decisions
every process must take alike (one that stops alone would leave the others waiting forever)."""

import json
import os
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from ..utils import TrainingError

logger = get_logger(__name__)
LOCK_NAME = ".pixelgpt-train.lock"


def all_ranks(accelerator, flag: bool) -> bool:
    """True when `flag` holds on every process (a decision every rank must take alike, or the others hang)."""
    flags = accelerator.gather(torch.tensor([flag], device=accelerator.device))
    return bool(flags.all())


def agreed(accelerator, error: Exception) -> Exception:
    """`error`, which every process raises alike (they agreed to stop), made sure to reach each one's output. torchrun
    stops the other processes (SIGTERM) as soon as the first one exits, which could cut a slower one off before it
    prints its line: from here on this process ignores SIGTERM, and ends by itself moments later."""
    if accelerator.num_processes > 1 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return error


def on_main_process(accelerator, action) -> None:
    """Run `action` on the main process; if it raises a TrainingError, every process raises it, so that none waits
    forever for a main process that stopped."""
    refusal = None
    if accelerator.is_main_process:
        try:
            action()
        except TrainingError as err:
            refusal = err
    if not all_ranks(accelerator, refusal is None):
        [message] = broadcast_object_list([str(refusal) if refusal else None])
        raise agreed(accelerator, refusal or TrainingError(message))


@contextmanager
def output_dir_lock(output_dir):
    """Hold `output_dir` for one run: a lock file, created only if absent, names the owner (pid, host). A second
    run is refused; a lock whose process is gone (same host) is taken over."""
    path, host = Path(output_dir, LOCK_NAME), socket.gethostname()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):
                owner = None
            owner = owner if isinstance(owner, dict) else {}
            # A lock that names no owner was left by a run killed between creating and writing it (a starting
            # run writes it within milliseconds): stale once it is a few seconds old.
            unowned = "pid" not in owner and time.time() - path.stat().st_mtime > 10
            if unowned or owner.get("host") == host and not _pid_alive(owner.get("pid", -1)):
                logger.warning(f"Taking over {path}: its run (pid {owner.get('pid')}) is gone.")
                path.unlink(missing_ok=True)
                continue
            raise TrainingError(
                f"--output_dir {output_dir} is in use by another training run (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}, since {owner.get('started', '?')}): wait for it or pick another "
                f"--output_dir. If that run is gone, delete {path}.") from None
    with os.fdopen(fd, "w") as file:
        json.dump({"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, file)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def check_shared_output_dir(accelerator, output_dir, wait: float = 5.0) -> None:
    """With several processes, every one must see the lock the main process holds in `output_dir`: each writes its
    part of a checkpoint there (accelerate's `random_states_<process>.pkl`) and reads it back on resuming, so
    machines that each have their own folder (not one shared filesystem) would save incomplete checkpoints. A
    process that does not see it looks again for `wait` seconds (a network filesystem may show a new file late);
    then every process refuses the run alike."""
    if accelerator.num_processes == 1:
        return
    path = Path(output_dir, LOCK_NAME)
    [owner] = broadcast_object_list([path.read_text() if accelerator.is_main_process else None])
    deadline = time.monotonic() + wait
    while not (seen := _read(path) == owner) and time.monotonic() < deadline:
        time.sleep(0.5)
    flags = accelerator.gather(torch.tensor([seen], device=accelerator.device)).tolist()
    if all(flags):
        return
    blind = [str(rank) for rank, flag in enumerate(flags) if not flag]
    who = f"process {blind[0]} of {len(flags)} does" if len(blind) == 1 else \
        f"processes {', '.join(blind)} of {len(flags)} do"
    owner = json.loads(owner)
    raise agreed(accelerator, TrainingError(
        f"--output_dir {output_dir} is not one folder shared by every machine: {who} not see the lock the main "
        f"process (pid {owner['pid']} on {owner['host']}) holds there. Every process writes its part of each "
        "checkpoint into --output_dir and reads it back to resume: give every machine the same path on a filesystem "
        "they all share. Nothing was trained."))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def check_output_dir(output_dir, bytes_needed: int = 0):
    """Fail before any training when the folder cannot be written or lacks room (with a margin) for one
    checkpoint; `bytes_needed` is the checkpoint's estimated size."""
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as err:
        raise TrainingError(f"--output_dir {folder} cannot be written ({err.strerror or err}); nothing was "
                            "trained. Pick a folder you can write to.") from err
    free = shutil.disk_usage(folder).free
    if bytes_needed and free < 2 * bytes_needed:
        raise TrainingError(f"--output_dir {folder} has {_size(free)} free; one checkpoint needs about "
                            f"{_size(bytes_needed)} (twice that while the next is written). Free space or pick "
                            "another folder.")


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
