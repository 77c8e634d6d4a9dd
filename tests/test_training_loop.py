"""pixelgpt.training.loop: the start of a run (folder secured before anything else), the optimizer, schedule and
step (a non-finite loss never reaches the weights), the room checked for a checkpoint, and the push. No training
(the loop itself runs in test_training.py)."""

import dataclasses
import json
import os
import socket
import time
from collections import namedtuple
from unittest import mock

import pytest
import torch
from accelerate import Accelerator
from training_helpers import fake_hub, fresh_accelerate_state, prepared_accelerator, reset_accelerate

from pixelgpt import training
from pixelgpt.training import RunArguments, workspace
from pixelgpt.training.loop import Budget, Trainer, adamw, launch, optimizer_step, push_folder, schedule, step_budget
from pixelgpt.training.workspace import LOCK_NAME
from pixelgpt.utils import TrainingError

fresh_state = pytest.fixture(autouse=True)(fresh_accelerate_state)
accelerator = pytest.fixture(prepared_accelerator)


def test_launch_holds_the_folder_for_the_run_and_removes_what_a_killed_run_left_first(tmp_path):
    out = tmp_path / "out"
    for name in ("checkpoint-2", "checkpoint-4.tmp", "checkpoint-2.old"):
        (out / name).mkdir(parents=True)
    seen = {}

    def body(accelerator, started):
        seen["owner"] = json.loads((out / LOCK_NAME).read_text())["pid"]
        seen["folders"] = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        return "figures"

    assert launch(RunArguments(output_dir=str(out)), body) == "figures"
    assert seen == {"owner": os.getpid(), "folders": ["checkpoint-2"]}
    assert not (out / LOCK_NAME).exists()
    reset_accelerate()

    def interrupted(accelerator, started):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the run

    with pytest.raises(KeyboardInterrupt):
        launch(RunArguments(output_dir=str(out)), interrupted)
    assert not (out / LOCK_NAME).exists()  # the lock went with the run


def test_a_second_run_is_refused_before_it_touches_the_folder_of_the_first(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-4.tmp").mkdir(parents=True)  # the first run is writing a checkpoint
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (out / LOCK_NAME).write_text(json.dumps(lock))
    body = mock.Mock()
    with pytest.raises(TrainingError, match=rf"in use by another training run \(pid {os.getpid()} on "):
        launch(RunArguments(output_dir=str(out)), body)
    body.assert_not_called()
    assert (out / "checkpoint-4.tmp").is_dir() and json.loads((out / LOCK_NAME).read_text()) == lock


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_training(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    body = mock.Mock()
    with pytest.raises(TrainingError, match=r"cannot be written .*nothing was trained"):
        launch(RunArguments(output_dir=str(tmp_path / "file" / "out")), body)
    body.assert_not_called()


def test_adamw_decays_matrices_only_over_the_parameters_that_train():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)  # frozen (as a carried tokenizer is)
    optimizer = adamw(model.parameters(), RunArguments(weight_decay=0.1, learning_rate=1e-3, adam_beta1=0.8,
                                                       adam_beta2=0.9))
    decayed, plain = optimizer.param_groups
    assert [id(p) for p in decayed["params"]] == [id(model[0].weight)] and decayed["weight_decay"] == 0.1
    assert [id(p) for p in plain["params"]] == [id(p) for p in (model[0].bias, model[1].weight, model[1].bias,
                                                                  model[2].bias)]
    assert plain["weight_decay"] == 0.0 and decayed["lr"] == 1e-3 and decayed["betas"] == (0.8, 0.9)


def learning_rates(run, accelerator, steps_per_epoch):
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=run.learning_rate)
    max_steps = step_budget(run, accelerator, steps_per_epoch, Budget(2))
    scheduler = schedule(run, accelerator, optimizer, max_steps)
    rates = []
    for _ in range(max_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_schedule_warms_up_then_decays_over_the_whole_run(accelerator):
    run = RunArguments(learning_rate=1.0, lr_warmup_steps=4, num_epochs=2)
    rates = learning_rates(run, accelerator, steps_per_epoch=10)
    assert len(rates) == 20 and rates[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(rates[4:], rates[5:])) and 0 < rates[-1] < 0.01
    # --max_train_steps overrides the epochs (a stream has none), and warm-up takes at most half of the run.
    short = learning_rates(dataclasses.replace(run, max_train_steps=6), accelerator, steps_per_epoch=None)
    assert len(short) == 6 and short[:4] == [0.0, 1 / 3, 2 / 3, 1.0]


def test_the_default_length_is_the_trainers_budget_capped_by_what_it_reads(accelerator):
    run = RunArguments(train_batch_size=8)
    assert step_budget(run, accelerator, 50, Budget(3)) == 150  # passes
    # At most max_units pixels or tokens: 10,000 / (25 per image x 8 images per step) = 50 steps.
    assert step_budget(run, accelerator, 50, Budget(3, units_per_image=25, max_units=10_000)) == 50
    assert step_budget(run, accelerator, 10, Budget(3, units_per_image=25, max_units=10_000)) == 30  # under the cap
    accumulating = dataclasses.replace(run, gradient_accumulation_steps=2)  # 16 images per optimizer step
    assert step_budget(accumulating, accelerator, 50, Budget(3, units_per_image=25, max_units=10_000)) == 25
    assert step_budget(run, accelerator, 50, Budget(3, units_per_image=10**6, max_units=10)) == 1  # never 0
    # Given flags win over the budget: --max_train_steps first, then --num_epochs.
    assert step_budget(dataclasses.replace(run, num_epochs=2), accelerator, 50, Budget(3, 25, 10_000)) == 100
    assert step_budget(dataclasses.replace(run, num_epochs=2, max_train_steps=7), accelerator, 50, Budget(3)) == 7


def test_a_non_finite_loss_stops_the_run_before_it_reaches_the_weights(tmp_path, accelerator):
    (tmp_path / "checkpoint-2").mkdir()
    run = RunArguments(output_dir=str(tmp_path), learning_rate=0.1, lr_warmup_steps=0)
    model = accelerator._models[0]
    optimizer = accelerator.prepare(adamw(model.parameters(), run))
    scheduler = schedule(run, accelerator, optimizer, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.ones(2, 3)
    with pytest.raises(TrainingError, match=r"Training diverged at step 3: the loss is nan\. Nothing non-finite was "
                                            r"saved; the last good checkpoint is checkpoint-2\. Lower "
                                            r"--learning_rate \(now 0\.1\)"):
        optimizer_step(accelerator, run, model, model(x).sum() * float("nan"), optimizer, scheduler, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # not even a backward pass
    optimizer_step(accelerator, run, model, model(x).sum(), optimizer, scheduler, 1)
    assert not torch.equal(before["weight"], model.weight)


@pytest.mark.parametrize("use_ema, needed", [(False, "1.3 KiB"), (True, "1.7 KiB")])
def test_the_room_for_one_checkpoint_is_checked_from_the_model_before_training(tmp_path, monkeypatch, use_ema,
                                                                               needed):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(workspace.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    args = training.parse_args(["--output_dir", str(tmp_path)] + (["--use_ema"] if use_ema else []))
    trainer = Trainer(args, Accelerator(cpu=True), time.time())
    model = torch.nn.Linear(10, 10)  # 110 weights, 4 bytes each, with two Adam moments (and the EMA copy)
    with pytest.raises(TrainingError, match=rf"has 1000 bytes free; one checkpoint needs about {needed}"):
        trainer.prepare(model, model.parameters(), train=[], held_out=[], collate=None)
    assert list(tmp_path.iterdir()) == []


def test_the_push_uploads_the_final_folder_without_checkpoints_grids_logs_skipped_lists_or_lock(tmp_path,
                                                                                             accelerator):
    out = tmp_path / "my-model"
    kept = ["model.safetensors", "config.json", "preprocessor_config.json", "README.md", "samples.png",
            "samples_large.png", "eval_results.json", "modeling_pixelgpt.py"]
    left = ["checkpoint-2/model.safetensors", "samples/step-000002.png", "logs/pixelgpt/events.out.tfevents.1",
            "skipped_train_images.txt", LOCK_NAME]
    for name in kept + left:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    with fake_hub("me/my-model") as (calls, create):
        push_folder(RunArguments(hub_token="hf_token", hub_private_repo=True), out, "PixelGPT, step 2")
    create.assert_called_once_with("my-model", private=True, exist_ok=True)  # the folder's name by default
    assert calls == [("me/my-model", set(kept), "hf_token", "PixelGPT, step 2")]
