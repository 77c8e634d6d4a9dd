"""pixelgpt.training.checkpoints: atomic saves, rotation, leftovers of killed runs, the refusals before a resume, and
non-finite weights never saved. Milliseconds each: a real accelerator's save_state / load_state of a tiny model."""

import dataclasses
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from training_helpers import TINY, checkpoint_names, prepared_accelerator

from pixelgpt import training
from pixelgpt.training import RunArguments, checkpoints
from pixelgpt.training.checkpoints import (
    find_resume_checkpoint,
    list_checkpoints,
    recorded_settings,
    remove_partial_checkpoints,
    resume_state,
    rotate_checkpoints,
    save_checkpoint,
)
from pixelgpt.training.pixelgpt import run_settings
from pixelgpt.training.tokenizer import RESUME_SETTINGS as TOKENIZER_SETTINGS
from pixelgpt.utils import TrainingError

accelerator = pytest.fixture(prepared_accelerator)
SETTINGS = {"resolution": 8, "task": "generate"}


def model_of(accelerator):
    return accelerator._models[0]


def save(accelerator, run, step, ema=None, settings=SETTINGS, data=None):
    """A checkpoint whose weights all equal `step` (so that one can tell which step a checkpoint holds)."""
    model_of(accelerator).weight.data.fill_(step)
    return save_checkpoint(accelerator, run, step, ema, settings, data or {"positions": [[0, step]], "bad_images": []})


def saved_step(path) -> int:
    """The step a checkpoint's files say, after checking that they agree (step file, name, weights)."""
    step = json.loads((path / "pixelgpt_step.json").read_text())["step"]
    assert path.name == f"checkpoint-{step}"
    assert (load_file(str(path / "model.safetensors"))["weight"] == step).all()
    return step


def test_a_checkpoint_is_written_whole_with_its_settings_place_in_the_data_and_moving_average(tmp_path, accelerator):
    run = RunArguments(output_dir=str(tmp_path))
    ema = AveragedModel(model_of(accelerator), use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema.update_parameters(model_of(accelerator))
    path = save(accelerator, run, 3, ema=ema, data={"positions": [[1, 2]], "bad_images": ["a.png: broken"]})
    assert path == tmp_path / "checkpoint-3" and saved_step(path) == 3
    assert json.loads((path / "pixelgpt_step.json").read_text()) == {
        "step": 3, "settings": SETTINGS, "data": {"positions": [[1, 2]], "bad_images": ["a.png: broken"]}}
    saved_ema = load_file(str(path / "ema.safetensors"))
    assert saved_ema["n_averaged"].item() == 1  # the whole AveragedModel state, not only its weights
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]  # no temporary folder left


@pytest.mark.parametrize("limit, kept", [(2, [4, 6]), (1, [6]), (0, [2, 4, 6])])
def test_rotation_keeps_the_newest(tmp_path, accelerator, limit, kept):
    run = RunArguments(output_dir=str(tmp_path), checkpoints_total_limit=limit)
    for step in (2, 4, 6):
        save(accelerator, run, step)
    assert checkpoint_names(tmp_path) == [f"checkpoint-{step}" for step in kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == checkpoint_names(tmp_path)  # nothing rotated is left


def test_an_existing_checkpoint_is_never_overwritten(tmp_path, accelerator):
    run = RunArguments(output_dir=str(tmp_path))
    save(accelerator, run, 2)
    with pytest.raises(TrainingError, match=r"checkpoint-2 already exists; this run would overwrite it"):
        save(accelerator, run, 2)  # the same step again
    assert saved_step(tmp_path / "checkpoint-2") == 2


def test_leftovers_of_a_killed_run_are_never_listed_and_are_removed(tmp_path):
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-4.tmp", "checkpoint-2.old", "checkpoint-x",
                 "checkpoint-3-copy", "notes"):
        (tmp_path / name).mkdir()
    assert checkpoint_names(tmp_path) == ["checkpoint-9", "checkpoint-10"]  # by step, not by name
    remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-3-copy", "checkpoint-9",
                                                         "checkpoint-x", "notes"]


class Killed(BaseException):
    """A kill at one point of a save: nothing after that point runs (save_checkpoint cleans nothing up)."""


def kill_at(phase, patch, accelerator):
    """`writing` dies inside the save of checkpoint-4 (files half there, still under the temporary name),
    `renamed` right after checkpoint-4 is renamed into place, before old checkpoints are rotated out, `rotating` at
    the first deletion (checkpoint-4 with limit 1, checkpoint-6 with limit 2) after the old checkpoint was moved
    aside, before it is gone."""
    save_state, replace, rmtree = accelerator.save_state, os.replace, shutil.rmtree

    def dying_save(output_dir=None, **kwargs):
        if phase == "writing" and "checkpoint-4" in str(output_dir):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
            raise Killed
        return save_state(output_dir, **kwargs)

    def dying_replace(src, dst):
        replace(src, dst)
        if phase == "renamed" and str(dst).endswith("checkpoint-4"):
            raise Killed

    def dying_rmtree(path, *args, **kwargs):
        if phase == "rotating" and str(path).endswith(".old"):
            raise Killed
        return rmtree(path, *args, **kwargs)

    patch.setattr(accelerator, "save_state", dying_save)
    patch.setattr(checkpoints.os, "replace", dying_replace)
    patch.setattr(checkpoints.shutil, "rmtree", dying_rmtree)


@pytest.mark.parametrize("limit", [1, 2, 0], ids=["limit1", "limit2", "keep_all"])
@pytest.mark.parametrize("phase", ["writing", "renamed", "rotating"])
def test_a_kill_at_each_phase_of_a_save_leaves_complete_checkpoints_to_resume_from(tmp_path, accelerator, phase,
                                                                                   limit):
    run = RunArguments(output_dir=str(tmp_path), checkpoints_total_limit=limit)
    killed = False
    with pytest.MonkeyPatch.context() as patch:
        kill_at(phase, patch, accelerator)
        try:
            for step in (2, 4, 6):  # checkpoints of a 6-step run, every 2 steps
                save(accelerator, run, step)
        except Killed:
            killed = True
    assert killed != (phase == "rotating" and limit == 0)  # keeping every checkpoint, nothing is ever deleted
    complete = list_checkpoints(tmp_path)
    assert complete, "a kill during a checkpoint write must leave a complete checkpoint"
    for path in complete:  # every listed checkpoint is whole
        saved_step(path)
    if phase == "writing":
        assert (tmp_path / "checkpoint-4.tmp").is_dir() and not (tmp_path / "checkpoint-4").exists()
        assert checkpoint_names(tmp_path) == ["checkpoint-2"]
    # The next run removes the leftovers, resumes from the latest complete checkpoint and saves the steps after it.
    remove_partial_checkpoints(tmp_path)
    latest = find_resume_checkpoint(dataclasses.replace(run, resume_from_checkpoint="latest"), SETTINGS)
    assert latest == complete[-1]
    for step in range(saved_step(latest) + 2, 7, 2):
        save(accelerator, run, step)
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".tmp", ".old")] == []
    expected = {1: [6], 2: [4, 6], 0: [2, 4, 6]}[limit]
    assert checkpoint_names(tmp_path) == [f"checkpoint-{step}" for step in expected]


@pytest.mark.parametrize("what", ["weights", "moving average"])
def test_non_finite_weights_or_moving_average_are_never_checkpointed(tmp_path, accelerator, what):
    run = RunArguments(output_dir=str(tmp_path), checkpoints_total_limit=0)
    model = model_of(accelerator)
    ema = AveragedModel(model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    save(accelerator, run, 2, ema=ema)
    model.weight.data.fill_(4)
    ema.update_parameters(model)
    (model if what == "weights" else ema.module).weight.data[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"Training diverged at step 4: the weights or their moving average "
                                            r"\(EMA\) hold NaN or infinite values.*the last good checkpoint is "
                                            r"checkpoint-2\. Lower --learning_rate"):
        save_checkpoint(accelerator, run, 4, ema, SETTINGS, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # not even a temporary folder


def test_divergence_before_any_checkpoint_says_so(tmp_path, accelerator):
    later = RunArguments(output_dir=str(tmp_path))
    save(accelerator, later, 8)  # only checkpoints up to the step of the divergence count
    model_of(accelerator).weight.data.fill_(float("inf"))
    with pytest.raises(TrainingError, match="diverged at step 4: .*no good checkpoint was saved before it"):
        save_checkpoint(accelerator, later, 4, None, SETTINGS, {})


def test_resume_state_loads_weights_moving_average_and_place_in_the_data(tmp_path, accelerator):
    run = RunArguments(output_dir=str(tmp_path))
    model = model_of(accelerator)
    ema = AveragedModel(model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    model.weight.data.fill_(4)
    ema.update_parameters(model)
    ema.update_parameters(model)
    data = {"positions": [[1, 3]], "bad_images": ["x.png: broken"]}
    path = save(accelerator, run, 4, ema=ema, data=data)
    model.weight.data.fill_(-1)
    fresh = AveragedModel(model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    restored = []

    class Batches:
        def restore(self, saved, step):
            restored.append((saved, step))

    assert resume_state(accelerator, path, fresh, Batches()) == 4
    assert (model.weight == 4).all() and fresh.n_averaged.item() == 2
    assert restored == [(data, 4)]
    assert resume_state(accelerator, None, fresh, Batches()) == 0  # not resuming


# ---------------------------------------------------------------------------------------------- resume refusals
def test_latest_with_nothing_to_resume_fails_instead_of_starting_over(tmp_path, accelerator):
    run = RunArguments(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    with pytest.raises(TrainingError, match="there is no checkpoint in .* to resume from"):
        find_resume_checkpoint(run, SETTINGS)
    assert find_resume_checkpoint(RunArguments(output_dir=str(tmp_path)), SETTINGS) is None  # a new run


def test_a_new_run_is_refused_where_checkpoints_of_another_run_exist(tmp_path, accelerator):
    run = RunArguments(output_dir=str(tmp_path), checkpoints_total_limit=0)
    for step in (2, 4):
        save(accelerator, run, step)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=r"already holds checkpoints of a run \(checkpoint-2, checkpoint-4\): "
                                            r"continue it with --resume_from_checkpoint latest"):
        find_resume_checkpoint(dataclasses.replace(run, checkpoints_total_limit=1), SETTINGS)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_older_checkpoint_is_refused_while_later_ones_exist(tmp_path, accelerator):
    out = tmp_path / "out"
    run = RunArguments(output_dir=str(out), checkpoints_total_limit=3)
    for step in (2, 4, 6):
        save(accelerator, run, step)
    older = dataclasses.replace(run, resume_from_checkpoint=str(out / "checkpoint-2"))
    with pytest.raises(TrainingError, match=r"checkpoint-2: .* already has later checkpoints "
                                            r"\(checkpoint-4, checkpoint-6\)"):
        find_resume_checkpoint(older, SETTINGS)
    # An older checkpoint kept elsewhere is refused too: resuming it would replace the later ones here.
    shutil.copytree(out / "checkpoint-2", tmp_path / "kept" / "checkpoint-2")
    kept = dataclasses.replace(run, resume_from_checkpoint=str(tmp_path / "kept" / "checkpoint-2"))
    with pytest.raises(TrainingError, match=r"already has later checkpoints \(checkpoint-4, checkpoint-6\)"):
        find_resume_checkpoint(kept, SETTINGS)
    assert checkpoint_names(out) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # A bare checkpoint name is looked up in --output_dir; the latest given by name is accepted.
    assert find_resume_checkpoint(dataclasses.replace(run, resume_from_checkpoint="checkpoint-6"),
                                  SETTINGS) == out / "checkpoint-6"
    with pytest.raises(ValueError, match="is not a checkpoint-<step> folder"):
        find_resume_checkpoint(dataclasses.replace(run, resume_from_checkpoint=str(tmp_path / "kept")), SETTINGS)


def test_a_checkpoint_without_a_readable_step_file_is_a_one_line_refusal(tmp_path):
    run = RunArguments(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(TrainingError, match=r"checkpoint-3: its pixelgpt_step.json is missing or damaged"):
        find_resume_checkpoint(run, SETTINGS)
    step_file = tmp_path / "checkpoint-3" / "pixelgpt_step.json"
    step_file.write_text("{step: 3")
    with pytest.raises(TrainingError, match=r"pixelgpt_step.json is missing or damaged \(JSONDecodeError"):
        find_resume_checkpoint(run, SETTINGS)
    step_file.write_text('{"step": "3"}')
    with pytest.raises(TrainingError, match="pixelgpt_step.json holds no step number"):
        find_resume_checkpoint(run, SETTINGS)


def resume_with(tmp_path, accelerator, saved: dict, current: dict):
    """Resume, with the settings `current`, from a checkpoint that recorded `saved`."""
    run = RunArguments(output_dir=str(tmp_path))
    save(accelerator, run, 2, settings=saved)
    return find_resume_checkpoint(dataclasses.replace(run, resume_from_checkpoint="latest"), current)


@pytest.mark.parametrize("changed, message", [
    (["--resolution", "12"], r"--resolution 8 -> 12"),
    (["--task", "inpaint"], r"--task 'generate' -> 'inpaint'"),
    (["--train_batch_size", "2"], r"--train_batch_size 8 -> 2"),  # where the data resumes
])
def test_resuming_with_other_settings_is_refused_naming_them(tmp_path, accelerator, changed, message):
    saved = run_settings(training.parse_args(TINY))
    with pytest.raises(TrainingError, match=rf"Cannot resume from .*checkpoint-2: it was trained with other settings "
                                            rf"\({message}\)"):
        resume_with(tmp_path, accelerator, saved, run_settings(training.parse_args(TINY + changed)))


def test_the_same_model_given_explicitly_resumes(tmp_path, accelerator):
    saved = run_settings(training.parse_args(TINY))
    # The preset's derived MLP width, given explicitly, is the same model; so is a setting the checkpoint predates.
    explicit = run_settings(training.parse_args(TINY + ["--intermediate_size", "96", "--learning_rate", "1e-3"]))
    assert explicit == saved
    assert resume_with(tmp_path, accelerator, saved, dict(explicit, new_setting=1)).name == "checkpoint-2"


def test_a_tokenizer_checkpoint_belongs_to_its_codebook(tmp_path, accelerator):
    tokenizer = recorded_settings(training.parse_tokenizer_args([]), TOKENIZER_SETTINGS)
    other = recorded_settings(training.parse_tokenizer_args(["--fsq_levels", "5", "5"]), TOKENIZER_SETTINGS)
    with pytest.raises(TrainingError, match=r"other settings \(--fsq_levels \[8, 5, 5, 5\] -> \[5, 5\]\)"):
        resume_with(tmp_path, accelerator, tokenizer, other)


def test_a_checkpoint_that_predates_recorded_settings_resumes_with_a_warning(tmp_path, accelerator, caplog):
    assert resume_with(tmp_path, accelerator, None, SETTINGS).name == "checkpoint-2"
    assert "predates recorded settings" in caplog.text


def test_the_worker_count_is_a_setting_of_streams_only():
    prepared = recorded_settings(training.parse_args(["--dataloader_num_workers", "2"]), ())
    streamed = recorded_settings(training.parse_args(["--dataloader_num_workers", "2", "--streaming",
                                                      "--max_train_steps", "1"]), ())
    assert prepared["dataloader_num_workers"] is None and streamed["dataloader_num_workers"] == 2
    assert set(checkpoints.DATA_SETTINGS) < set(prepared)



def test_a_tokenizer_is_identified_by_its_weights_not_its_path(tmp_path, accelerator, monkeypatch):
    from pixelgpt import PixelGPTVQVAE, PixelGPTVQVAEConfig
    from pixelgpt.training.data import load_tokenizer

    torch.manual_seed(0)
    tokenizer = PixelGPTVQVAE(PixelGPTVQVAEConfig(image_size=8, base_channels=8, fsq_levels=[3, 3]))
    tokenizer.save_pretrained(tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    stage_two = [*TINY, "--tokenizer"]
    saved = run_settings(training.parse_args([*stage_two, "tok"]), load_tokenizer("tok"))
    # The same tokenizer written another way is the same tokenizer: resuming is accepted.
    same = run_settings(training.parse_args([*stage_two, "./tok"]), load_tokenizer("./tok"))
    assert resume_with(tmp_path / "a", accelerator, saved, same).name == "checkpoint-2"
    # Retrained in place (same folder, new weights): the resumed steps would train on other codes. Refused.
    with torch.no_grad():
        next(tokenizer.parameters()).add_(0.5)
    tokenizer.save_pretrained(tmp_path / "tok")
    retrained = run_settings(training.parse_args([*stage_two, "tok"]), load_tokenizer("tok"))
    with pytest.raises(TrainingError, match=r"other settings \(the --tokenizer's weights \(sha256 [0-9a-f]{12}\.\.\. "
                                            r"-> [0-9a-f]{12}\.\.\.: another or a retrained tokenizer\)\)"):
        resume_with(tmp_path / "b", accelerator, saved, retrained)
    # A checkpoint of the previous release recorded the path, which is not compared: it still resumes.
    older = {k: v for k, v in saved.items() if k != "tokenizer_digest"} | {"tokenizer": "tok"}
    assert resume_with(tmp_path / "c", accelerator, older, retrained).name == "checkpoint-2"


def test_a_run_ends_within_the_checkpoint_limit_after_a_kill_between_save_and_rotation(tmp_path, accelerator):
    run = RunArguments(output_dir=str(tmp_path), checkpoints_total_limit=2)
    for step in (2, 4):
        save(accelerator, run, step)
    # A kill after checkpoint-6 was renamed into place and before the rotation leaves limit + 1 checkpoints.
    with mock.patch.object(checkpoints, "rotate_checkpoints"):
        save(accelerator, run, 6)
    assert checkpoint_names(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    rotate_checkpoints(run)  # what the resumed run's end (or its next save) does
    assert checkpoint_names(tmp_path) == ["checkpoint-4", "checkpoint-6"]
