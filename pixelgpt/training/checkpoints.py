"""Checkpoints: written atomically (a temporary folder renamed once complete), rotated only after a new one is
complete, never written from non-finite weights; found and checked before a resume (its recorded settings must
equal the run's), and loaded back with the place in the data."""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate.logging import get_logger
from safetensors.torch import load_file, save_file

from ..utils import TrainingError
from .arguments import RunArguments
from .workspace import all_ranks

logger = get_logger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# What decides which images a resumed run's position in its data points to (`TrainingBatches`); both training
# scripts record them. The worker count matters only to a stream (each worker reads its own files).
DATA_SETTINGS = ("streaming", "seed", "train_batch_size", "shuffle_buffer_size", "max_eval_samples", "eval_fraction",
                 "eval_split", "split", "max_train_samples")


def recorded_settings(args, names: tuple) -> dict:
    """The settings a checkpoint records and a resume must match: `names` (the trainer's own) and DATA_SETTINGS, read
    from `args` (a trainer's resolved arguments, `Arguments.flat()`)."""
    flat = args.flat()
    settings = {name: flat[name] for name in names + DATA_SETTINGS}
    settings["dataloader_num_workers"] = flat["dataloader_num_workers"] if flat["streaming"] else None
    return settings



def list_checkpoints(output_dir):
    """Complete checkpoints, oldest first. Partial saves live in `*.tmp` folders, checkpoints being deleted in
    `*.old` folders; neither is ever listed."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_partial_checkpoints(output_dir):
    """Folders a killed run left: an unfinished save (`.tmp`) or a deletion that did not finish (`.old`)."""
    for leftover in Path(output_dir).glob("checkpoint-*"):
        if leftover.is_dir() and leftover.suffix in (".tmp", ".old"):
            shutil.rmtree(leftover)


def save_checkpoint(accelerator, run: RunArguments, step, ema, settings: dict, data_state: dict):
    """Write `checkpoint-<step>` with the run's `settings` (which a resume must match) and where every process is in
    its data (`TrainingBatches.state()`) atomically (into a temporary folder, renamed only once complete); only then
    delete the oldest ones beyond `--checkpoints_total_limit`, so a kill at any moment leaves a complete checkpoint."""
    final = Path(run.output_dir, f"checkpoint-{step}")
    tmp = final.with_name(final.name + ".tmp")
    model = accelerator._models[0]
    finite = weights_are_finite(model) and (ema is None or weights_are_finite(ema))
    if not all_ranks(accelerator, finite):
        raise TrainingError(diverged_message(run, step, "the weights or their moving average (EMA) hold NaN or "
                                                         "infinite values"))
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # refused up front (find_resume_checkpoint); never overwrite a checkpoint
            raise TrainingError(f"{final} already exists; this run would overwrite it. Nothing was changed.")
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's files (its RNG state) are in before the folder is renamed
    if accelerator.is_main_process:
        if ema is not None:
            # The whole AveragedModel state: weights and `n_averaged` (0 would make the next update a copy).
            save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
        (tmp / "pixelgpt_step.json").write_text(json.dumps({"step": step, "settings": settings, "data": data_state}))
        os.replace(tmp, final)  # atomic on one filesystem: `latest` never sees a half-written checkpoint
        rotate_checkpoints(run)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(run: RunArguments) -> None:
    """Delete the oldest checkpoints beyond --checkpoints_total_limit (main process). Called after each complete save
    and at the end of a run, so that a run killed between a save and its rotation, then resumed, still ends within
    the limit."""
    if run.checkpoints_total_limit:
        existing = list_checkpoints(run.output_dir)
        for old in existing[: max(0, len(existing) - run.checkpoints_total_limit)]:
            doomed = old.with_name(old.name + ".old")
            os.replace(old, doomed)  # out of `latest`'s sight before the slow delete
            shutil.rmtree(doomed)


def diverged_message(run: RunArguments, step, what) -> str:
    # Every listed checkpoint was checked finite when it was written (`save_checkpoint`).
    found = [p for p in list_checkpoints(run.output_dir) if int(p.name.split("-")[1]) <= step]
    last = f"the last good checkpoint is {found[-1].name}" if found else "no good checkpoint was saved before it"
    return (f"Training diverged at step {step}: {what}. Nothing non-finite was saved; {last}. Lower "
            f"--learning_rate (now {run.learning_rate}), or keep --max_grad_norm > 0 and raise --lr_warmup_steps, "
            "then resume with --resume_from_checkpoint latest.")


def describe_change(name: str, saved, current) -> str:
    if name == "tokenizer_digest":  # the tokenizer is identified by its weights, not by the path it was read from
        short = [value[:12] + "..." if value else "none" for value in (saved, current)]
        return f"the --tokenizer's weights (sha256 {short[0]} -> {short[1]}: another or a retrained tokenizer)"
    return f"--{name} {saved!r} -> {current!r}"


def find_resume_checkpoint(run: RunArguments, current: dict) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names, after checking that resuming from it loses nothing and
    means something (its recorded settings equal `current`); None when not resuming."""
    found = list_checkpoints(run.output_dir)
    if not run.resume_from_checkpoint:
        if found:  # a new run would mix its checkpoints with these, and rotation would delete the wrong ones
            raise TrainingError(f"--output_dir {run.output_dir} already holds checkpoints of a run "
                                f"({', '.join(p.name for p in found)}): continue it with --resume_from_checkpoint "
                                "latest, or start afresh in another --output_dir (or move them away).")
        return None
    if run.resume_from_checkpoint == "latest":
        if not found:
            raise TrainingError(f"--resume_from_checkpoint latest: there is no checkpoint in {run.output_dir} to "
                                "resume from. Leave the flag out to start a new run.")
        path = found[-1]
    else:
        path = Path(run.resume_from_checkpoint)
        if not path.exists() and Path(run.output_dir, path).is_dir():  # a bare name: inside --output_dir
            path = Path(run.output_dir, path)
        if not CHECKPOINT_RE.match(path.name) or not path.is_dir():
            raise ValueError(f"--resume_from_checkpoint {path} is not a checkpoint-<step> folder.")
        # Any later checkpoint in --output_dir (wherever the resumed one lives) would be replaced by this run.
        later = [p.name for p in found if int(p.name.split("-")[1]) > int(path.name.split("-")[1])]
        if later:
            raise TrainingError(f"--resume_from_checkpoint {path.name}: {run.output_dir} already has later "
                                f"checkpoints ({', '.join(later)}), which resuming would replace. Resume from "
                                "'latest', or move those checkpoints away first.")
    try:
        saved = json.loads((path / "pixelgpt_step.json").read_text())
        step = saved["step"]
        saved = saved.get("settings")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TrainingError(f"--resume_from_checkpoint {path}: its pixelgpt_step.json is missing or damaged "
                            f"({type(err).__name__}: {err}), so the step to resume from is unknown; resume from "
                            "another checkpoint.") from None
    if not isinstance(step, int):
        raise TrainingError(f"--resume_from_checkpoint {path}: pixelgpt_step.json holds no step number.")
    if saved is None:
        logger.warning(f"{path.name} predates recorded settings: make sure the model flags match it.")
    else:
        changed = [describe_change(name, saved[name], current[name]) for name in current
                   if name in saved and saved[name] != current[name]]
        if changed:
            raise TrainingError(f"Cannot resume from {path}: it was trained with other settings "
                                f"({'; '.join(changed)}). Resume with the checkpoint's settings, or start a new run "
                                "in another --output_dir.")
    return path


def resume_state(accelerator, resume_path, ema, batches) -> int:
    """Load a checkpoint (weights, optimizer, scheduler, RNG, EMA, place in the data); returns its step."""
    if resume_path is None:
        return 0
    accelerator.load_state(str(resume_path))
    saved = json.loads((resume_path / "pixelgpt_step.json").read_text())
    if ema is not None:
        ema.load_state_dict(load_file(str(resume_path / "ema.safetensors")))
    batches.restore(saved.get("data"), saved["step"])
    logger.info(f"Resumed from {resume_path.name} at step {saved['step']}")
    return saved["step"]


def weights_are_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
