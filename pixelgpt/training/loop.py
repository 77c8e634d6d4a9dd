"""The one training loop both trainers run (`Trainer`): accumulation, step counting, the moving average, the progress
bar, the cadence of logs, checkpoints, evaluations and sample grids, skipped images, the final save, the results
JSON and the push; and the plumbing around it (accelerate's start, optimizer, schedule, trackers). A trainer
(`PixelGPTTrainer`, `TokenizerTrainer`) builds its data and model and says what a loss, an evaluation, a grid and
a card are."""

import dataclasses
import json
import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..utils import TrainingError
from .arguments import RunArguments
from .batches import TrainingBatches
from .checkpoints import (
    diverged_message,
    find_resume_checkpoint,
    recorded_settings,
    remove_partial_checkpoints,
    resume_state,
    rotate_checkpoints,
    save_checkpoint,
    weights_are_finite,
)
from .data import check_images, load_splits, write_skipped
from .workspace import (
    LOCK_NAME,
    agreed,
    all_ranks,
    check_output_dir,
    check_shared_output_dir,
    on_main_process,
    output_dir_lock,
)

logger = get_logger(__name__)
# Arguments that never reach a tracker, a log, a card or a file.
SECRET_ARGS = ("hub_token",)


def launch(run: RunArguments, body):
    """Start accelerate, secure `--output_dir` (writable, locked for this run, unfinished checkpoints removed, the
    same folder for every process of every machine), then `body(accelerator, started)`: the start of both
    trainers."""
    started = time.time()
    accelerator = Accelerator(
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        mixed_precision=run.mixed_precision,
        log_with=None if run.report_to == "none" else run.report_to,
        project_config=ProjectConfiguration(project_dir=run.output_dir, logging_dir=str(Path(run.output_dir, "logs"))),
        # The seedable sampler makes epoch e's order a function of (seed, e): a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=run.seed),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("pixelgpt").setLevel(logging.INFO)  # our progress lines, not accelerate's per-file saves
    with ExitStack() as held:

        def secure_output_dir():  # writable, and this run's alone (the main process holds the lock for all)
            check_output_dir(run.output_dir)
            held.enter_context(output_dir_lock(run.output_dir))
            remove_partial_checkpoints(run.output_dir)

        on_main_process(accelerator, secure_output_dir)  # before any data is read
        check_shared_output_dir(accelerator, run.output_dir)  # several machines write one folder
        return body(accelerator, started)


def adamw(parameters, run: RunArguments) -> torch.optim.AdamW:
    """AdamW that decays matrices only (not norms or biases), over the parameters that train."""
    trained = [p for p in parameters if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in trained if p.ndim >= 2], "weight_decay": run.weight_decay},
                              {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
                             lr=run.learning_rate, betas=(run.adam_beta1, run.adam_beta2))


@dataclasses.dataclass(frozen=True)
class Budget:
    """A trainer's default length: `passes` over the data, and at most `max_units` pixels or tokens read (one image
    is `units_per_image`), so that large or high-resolution data does not make a default run hours long."""

    passes: int
    units_per_image: int = 0
    max_units: int = 0


def step_budget(run: RunArguments, accelerator, steps_per_epoch: int | None, budget: Budget) -> int:
    """A run's optimizer steps: --max_train_steps, else --num_epochs passes, else the trainer's default `budget`
    (`steps_per_epoch` is None for a stream, which --max_train_steps then sets)."""
    if run.max_train_steps or run.num_epochs:
        return run.max_train_steps or run.num_epochs * steps_per_epoch
    steps = budget.passes * steps_per_epoch
    if budget.units_per_image:  # the cap: what `budget.max_units` of pixels or tokens allow, at this batch size
        images_per_step = run.train_batch_size * run.gradient_accumulation_steps * accelerator.num_processes
        steps = min(steps, max(1, budget.max_units // (budget.units_per_image * images_per_step)))
    return steps


def schedule(run: RunArguments, accelerator, optimizer, max_steps: int):
    """The warm-up-then-cosine scheduler of a run of `max_steps` optimizer steps."""
    # accelerate steps a prepared scheduler once per process per optimizer step, so lengths scale with processes.
    return get_cosine_schedule_with_warmup(optimizer, min(run.lr_warmup_steps, max_steps // 2) *
                                           accelerator.num_processes, max_steps * accelerator.num_processes)


def optimizer_step(accelerator, run: RunArguments, model, loss, optimizer, scheduler, step: int) -> None:
    """Backward, clip and step (inside `accelerator.accumulate`), after stopping at the first non-finite loss,
    before it reaches the weights (every process agrees)."""
    losses = accelerator.gather(loss.detach().float().reshape(1)).tolist()  # every process's, in the same message
    if not all(map(math.isfinite, losses)):
        worst = next(value for value in losses if not math.isfinite(value))
        raise agreed(accelerator, TrainingError(diverged_message(run, step, f"the loss is {worst}")))
    accelerator.backward(loss)
    if accelerator.sync_gradients and run.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def push_folder(run: RunArguments, out: Path, message: str) -> None:
    """Upload the final folder without checkpoints, intermediate grids, logs and lists of skipped files."""
    from huggingface_hub import HfApi

    api = HfApi(token=run.hub_token)
    repo_id = api.create_repo(run.hub_model_id or out.resolve().name, private=run.hub_private_repo,
                              exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message=message,
                      # the lock names this machine and is still held here; the model carries stage one's tokenizer,
                      # and the folder's tokenizer.json is the prompt tokenizer kept for a resume
                      ignore_patterns=["checkpoint-*", "samples/*", "logs/*", "skipped_*", LOCK_NAME, "tokenizer/*",
                                       "prompt-tokenizer/*"])
    logger.info(f"Pushed to https://huggingface.co/{repo_id}")


class Trainer:
    """A training run from its first step (or a checkpoint) to the saved folder. A subclass builds its data and
    model in `__init__` (after `super().__init__`, calling `prepare` and then `resume`) and defines:

    - `loss(batch, step)`: the loss of one micro-batch (any training randomness from torch's global RNG, which
      checkpoints restore); `after_step(step)` runs after the optimizer step, inside the accumulation context;
    - `shown(loss)`: (progress-bar postfix, tracker values) of an optimizer step;
    - `evaluate(step, final)`: held-out figures (a dict; logged and returned);
    - `sample_grid()`: a PIL grid of the current model's samples;
    - `final_metrics(figures)` and `write_card(folder, metrics)`: what the saved folder reports;
      `after_save(folder, metrics)` may measure the saved model and add to its card (before any push).
    """

    description = "Training"  # the progress bar's
    title = "PixelGPT"  # of the tracker project and the push's commit
    grid_name = "samples.png"  # the final grid, in the output folder
    resume_settings: tuple = ()  # the trainer's own settings a checkpoint records (with the data's)

    def __init__(self, args, accelerator, started: float, stage: str | None = None):
        self.args, self.run, self.accelerator, self.started = args, args.run, accelerator, started
        if stage:  # one of several in this run: the progress bar says which
            self.description = f"Stage {stage}: {self.description.lower()}"
        set_seed(self.run.seed)
        self.ema, self.step = None, 0

    def find_resume(self, settings: dict | None = None) -> None:
        """Refuse a bad resume before spending time on data (`settings`: what a checkpoint must match)."""
        self.settings = settings or recorded_settings(self.args, self.resume_settings)
        self.resume_path = find_resume_checkpoint(self.run, self.settings)

    def load_data(self, processor, column_checks=()):
        """(train, held-out rows, dataset name); the held-out images are checked up front (at most
        --max_eval_samples; training images as they are read): `column_checks` adds (column, processor, split name)
        for other image columns of a row."""
        data = self.args.data
        train, held_out, name = load_splits(data, self.run.seed)
        for column, reader, split in ((data.image_column, processor, "eval"), *column_checks):
            held_out = check_images(held_out, column, reader, reader.image_size, split, data.skip_bad_images,
                                    self.run.output_dir)
        return train, held_out, name

    def prepare(self, model, trained, train, held_out, collate, eval_collate=None, budget: Budget = Budget(2)) -> None:
        """Check the room for a checkpoint, make the batches and the held-out loader, and prepare the model,
        optimizer (over `trained`), loader and schedule (`budget`: the default length) with accelerate."""
        run, accelerator = self.run, self.accelerator
        # One checkpoint holds the weights, two Adam moments and the EMA copy, 4 bytes each.
        size = 4 * sum(p.numel() for p in model.parameters()) * (3 + bool(run.use_ema))
        on_main_process(accelerator, lambda: check_output_dir(run.output_dir, size))
        self.batches = TrainingBatches(self.args.data, run, accelerator, train, collate)
        eval_loader = torch.utils.data.DataLoader(held_out, batch_size=run.eval_batch_size,
                                                  collate_fn=eval_collate or collate,
                                                  generator=torch.Generator().manual_seed(run.seed),  # see batches
                                                  num_workers=run.dataloader_num_workers)
        optimizer = adamw(trained, run)
        self.max_steps = step_budget(run, accelerator, self.batches.steps_per_epoch, budget)
        scheduler = schedule(run, accelerator, optimizer, self.max_steps)
        self.model, self.optimizer, self.eval_loader, self.scheduler = accelerator.prepare(
            model, optimizer, eval_loader, scheduler)
        self.models = (self.model,)

    def resume(self) -> None:
        """The moving average, trackers, and the checkpoint's state (weights, optimizer, RNG, place in the data)."""
        run, accelerator = self.run, self.accelerator
        if run.use_ema:
            if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
                raise ValueError("--use_ema keeps a full copy of the weights and is not supported with FSDP or "
                                 "DeepSpeed sharding; use DDP (multi_gpu.yaml) or drop --use_ema.")
            self.ema = AveragedModel(accelerator.unwrap_model(self.model), use_buffers=True,
                                     multi_avg_fn=get_ema_multi_avg_fn(run.ema_decay))
        if accelerator.is_main_process:
            accelerator.init_trackers(self.title.lower().replace(" ", "-"), config={
                k: v for k, v in self.args.flat().items()
                if isinstance(v, (int, float, str, bool)) and k not in SECRET_ARGS})
        self.step = resume_state(accelerator, self.resume_path, self.ema, self.batches)
        if self.resume_path is not None and self.step >= self.max_steps:
            logger.info(f"The run is already at step {self.step} of {self.max_steps}: nothing left to train.")

    def after_step(self, step: int) -> None:
        pass

    # ------------------------------------------------------------------------------------------------- the loop
    def train(self, last_stage: bool = True):
        """Train to the last step, then save the folder; returns the final held-out figures. A stage that another
        follows in the same run (`last_stage=False`) leaves accelerate's trackers and processes up for it."""
        try:
            self.loop()
            return self.finish()
        finally:
            # Release the DDP wrapper (and its gradient reducer) while the process group still exists: freed after
            # end_training() destroys the group, it could hang a CPU/gloo run on its way out.
            for name in ("model", "models", "optimizer", "batches", "eval_loader", "scheduler", "ema"):
                self.__dict__.pop(name, None)
            self.release()
            self.accelerator.free_memory()
            if last_stage:
                self.accelerator.end_training()

    def release(self) -> None:
        """Drop what a subclass holds of prepared objects (see `train`)."""

    def after_save(self, folder: Path, metrics: dict) -> None:
        """Measurements of the saved folder (main process only), before a push."""

    def loop(self) -> None:
        run, accelerator = self.run, self.accelerator
        progress = tqdm(total=self.max_steps, initial=self.step, desc=self.description,
                        disable=not accelerator.is_local_main_process)
        self.model.train()
        with progress:  # closed, its line ended, also when the run stops: a message then starts its own line
            for batch in self.batches if self.step < self.max_steps else ():
                with accelerator.accumulate(*self.models):
                    loss = self.loss(batch, self.step)
                    optimizer_step(accelerator, run, self.model, loss, self.optimizer, self.scheduler, self.step + 1)
                    self.after_step(self.step)
                if not accelerator.sync_gradients:
                    continue
                self.step += 1
                step = self.step
                if self.ema is not None:
                    self.ema.update_parameters(accelerator.unwrap_model(self.model))
                postfix, logged = self.shown(loss)
                progress.update(1)
                progress.set_postfix(**postfix)
                if step % run.logging_steps == 0:
                    accelerator.log(dict(logged, **{"train/lr": self.scheduler.get_last_lr()[0]}), step=step)
                if step % run.checkpointing_steps == 0:
                    save_checkpoint(accelerator, run, step, self.ema, self.settings, self.batches.state())
                if step % run.eval_steps == 0 and step < self.max_steps:
                    self.evaluate(step)
                if step % run.sample_steps == 0 and step < self.max_steps and accelerator.is_main_process:
                    self.save_grid(step)
                if step >= self.max_steps:
                    break

    def save_grid(self, step: int):
        """The current model's grid, saved as samples/step-<step>.png and shown to the trackers."""
        grid = self.sample_grid()
        path = Path(self.run.output_dir, "samples", f"step-{step:06d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"samples": wandb.Image(grid)}, step=step)
        return grid

    def finish(self):
        """Skipped images, the final (EMA) weights checked finite, the final evaluation, then the folder: model,
        processor, grid, eval_results.json, card, and the push."""
        accelerator, run = self.accelerator, self.run
        bad_images = self.batches.all_bad_images()  # met by any process (skipped, with --skip_bad_images)
        if bad_images and accelerator.is_main_process:
            write_skipped(run.output_dir, "train", bad_images)
        accelerator.wait_for_everyone()
        final_model = accelerator.unwrap_model(self.model)
        if self.ema is not None:
            final_model.load_state_dict(self.ema.module.state_dict())
        if not all_ranks(accelerator, weights_are_finite(final_model)):
            raise agreed(accelerator, TrainingError(diverged_message(run, self.step, "the final weights hold NaN or "
                                                                                   "infinite values")))
        state_dict = accelerator.get_state_dict(self.model)  # collective: gathers shards under FSDP / DeepSpeed
        figures = self.evaluate(self.step, final=True)
        if accelerator.is_main_process:
            rotate_checkpoints(run)
            out = Path(run.output_dir)
            final_model.save_pretrained(out, state_dict=state_dict)
            self.processor.save_pretrained(out)
            self.save_grid(self.step).save(out / self.grid_name)
            metrics = dict(self.final_metrics(figures), steps=self.step,
                           train_seconds=round(time.time() - self.started, 1), skipped_train_images=len(bad_images))
            (out / "eval_results.json").write_text(json.dumps(metrics, indent=2))
            self.write_card(out, metrics)
            self.after_save(out, metrics)
            if run.push_to_hub:
                push_folder(run, out, f"{self.title}, step {self.step}")
        return figures

    def log_figures(self, step: int, figures: dict, text: str, final: bool) -> None:
        self.accelerator.log({f"eval/{k}": v for k, v in figures.items() if v is not None}, step=step)
        logger.info(f"{'final' if final else f'step {step}:'} {text}")
