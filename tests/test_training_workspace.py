"""pixelgpt.training.workspace: the output folder's lock (one run at a time; locks of dead runs taken over), the
checks before any training (writable, room for a checkpoint) and the decisions every process takes alike."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest
from training_helpers import fresh_accelerator

from pixelgpt.training import workspace
from pixelgpt.training.workspace import LOCK_NAME, check_output_dir, on_main_process, output_dir_lock
from pixelgpt.utils import TrainingError

process_state = pytest.fixture(autouse=True)(fresh_accelerator)  # for the logger and the collectives


def owner(folder) -> dict:
    return json.loads((folder / LOCK_NAME).read_text())


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_the_lock_names_its_run_and_a_second_run_is_refused_while_it_holds_the_folder(tmp_path):
    with output_dir_lock(tmp_path):
        held = owner(tmp_path)
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started"]
        with pytest.raises(TrainingError, match=rf"--output_dir {tmp_path} is in use by another training run "
                                                rf"\(pid {os.getpid()} on {socket.gethostname()}, since "):
            with output_dir_lock(tmp_path):
                pass
        assert owner(tmp_path) == held  # the refused run left the first one's lock alone
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_run_stops_with_an_exception(tmp_path):
    with pytest.raises(KeyboardInterrupt), output_dir_lock(tmp_path):  # Ctrl-C in the middle of the run
        raise KeyboardInterrupt
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with output_dir_lock(tmp_path):
        assert owner(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists() and "Taking over" in caplog.text


def test_a_lock_of_a_run_on_another_host_is_never_taken_over(tmp_path):
    lock = {"pid": dead_pid(), "host": socket.gethostname() + "-elsewhere", "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(TrainingError, match=rf"\(pid {lock['pid']} on {lock['host']}, since then\)"):
        with output_dir_lock(tmp_path):
            pass
    assert owner(tmp_path) == lock


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_a_lock_without_owner_left_by_a_kill_is_taken_over_once_it_is_old(tmp_path, content):
    lock = tmp_path / LOCK_NAME
    lock.write_text(content)  # killed between creating the lock and writing its owner
    with pytest.raises(TrainingError, match=r"in use by another training run \(pid \? on \?"):
        with output_dir_lock(tmp_path):  # a fresh one may be a run starting now
            pass
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with output_dir_lock(tmp_path):
        assert owner(tmp_path)["pid"] == os.getpid()
    assert not lock.exists()


def test_an_output_folder_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(TrainingError, match=rf"--output_dir {tmp_path}/file/out cannot be written \(.*\); nothing "
                                            "was trained. Pick a folder you can write to."):
        check_output_dir(tmp_path / "file" / "out")


def refusal_as_nobody(folder) -> str:
    """check_output_dir(folder) in a child process that has become nobody (file modes apply to it, not to root);
    forked, so that it needs no new interpreter. Returns the refusal's message, or "ACCEPTED"."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child process)
        try:
            os.setgid(65534)
            os.setuid(65534)
            check_output_dir(folder)
            os.write(write, b"ACCEPTED")
        except TrainingError as err:
            os.write(write, str(err).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        return pipe.read()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_an_unwritable_output_folder_is_refused():
    base = Path(tempfile.mkdtemp(prefix="pixelgpt-ro-"))  # not under pytest's private tmp: nobody must reach it
    try:
        base.chmod(0o755)
        folder = base / "locked"
        folder.mkdir(mode=0o555)
        folder.chmod(0o555)
        if os.geteuid() == 0:
            message = refusal_as_nobody(folder)
        else:
            with pytest.raises(TrainingError) as err:
                check_output_dir(folder)
            message = str(err.value)
        assert f"--output_dir {folder} cannot be written" in message and "nothing was trained" in message, message
        assert list(folder.iterdir()) == []
    finally:
        if (base / "locked").exists():
            (base / "locked").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_too_little_free_space_for_one_checkpoint_is_refused(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(workspace.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    check_output_dir(tmp_path)  # without a size: only that the folder can be written
    check_output_dir(tmp_path, 500)  # twice the checkpoint fits
    with pytest.raises(TrainingError, match=r"has 1000 bytes free; one checkpoint needs about 1\.5 KiB \(twice that "
                                            r"while the next is written\)"):
        check_output_dir(tmp_path, 1536)
    monkeypatch.setattr(workspace.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 3 * 2**30, 3 * 2**30))
    with pytest.raises(TrainingError, match=r"has 3\.0 GiB free; one checkpoint needs about 2\.5 GiB"):
        check_output_dir(tmp_path, 5 * 2**29)
    assert list(tmp_path.iterdir()) == []  # the write test leaves nothing


def test_a_refusal_on_the_main_process_stops_every_process(process_state):
    def refuse():
        raise TrainingError("the folder is busy")

    with pytest.raises(TrainingError, match="the folder is busy"):
        on_main_process(process_state, refuse)
    ran = []
    on_main_process(process_state, lambda: ran.append(1))
    assert ran == [1]
    assert workspace.all_ranks(process_state, True) and not workspace.all_ranks(process_state, False)
