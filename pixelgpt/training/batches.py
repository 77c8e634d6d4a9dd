"""The training batches of a run and where each process is in them, which checkpoints save so that a resumed run
reads the same batches as an uninterrupted one (prepared data and streams alike)."""

import itertools
import math

import torch
from accelerate.utils import gather_object, send_to_device
from datasets.distributed import split_dataset_by_node

from ..utils import TrainingError
from .arguments import DataArguments, RunArguments
from .checkpoints import list_checkpoints
from .workspace import agreed

# What a process found in its micro-batch (or in a whole pass of its part); every process acts on the worst any found.
USABLE, ALL_BAD, BAD_IMAGE, EMPTY_PART = range(4)


class TrainingBatches:
    """The training batches of a run, pass after pass, and where this process is in them (saved in checkpoints).

    A prepared `Dataset` is shuffled by accelerate's seedable sampler and split across processes by accelerate. A
    streamed `IterableDataset` is shuffled through a buffer (reshuffled each pass) and split with
    `split_dataset_by_node`: each process reads its own part and moves its batches to its device. Rows are decoded
    by the collate function as batches are made; bad images are counted in `bad_images` or stop the run."""

    def __init__(self, data: DataArguments, run: RunArguments, accelerator, train, collate):
        self.accelerator, self.data, self.run = accelerator, data, run
        self.streaming, self.epoch, self.position = data.streaming, 0, 0  # position: micro-batches read this pass
        self.bad_images: dict[str, None] = {}  # an ordered set: an image met again in the next pass counts once
        # Each loader has its own generator: creating an iterator (every pass, the skipping loader of a resumed run)
        # then never draws from torch's global RNG, which training randomness relies on.
        loader = dict(batch_size=run.train_batch_size, collate_fn=collate, num_workers=run.dataloader_num_workers,
                      generator=torch.Generator().manual_seed(run.seed))
        if self.streaming:
            train = train.shuffle(seed=run.seed, buffer_size=data.shuffle_buffer_size)
            self.dataset = split_dataset_by_node(train, accelerator.process_index, accelerator.num_processes)
            # No drop_last: each DataLoader worker batches its own files, and would drop its own remainder.
            self.loader, self.steps_per_epoch = torch.utils.data.DataLoader(self.dataset, **loader), None
        else:
            loader = torch.utils.data.DataLoader(train, shuffle=True, drop_last=True, **loader)
            self.loader = accelerator.prepare(loader)
            if len(self.loader) == 0:  # alike on every process: each gets as many batches
                raise ValueError(self._too_few_message(len(train)))
            self.steps_per_epoch = math.ceil(len(loader) / run.gradient_accumulation_steps /
                                             accelerator.num_processes)

    def __iter__(self):
        """Batches without end, from (`epoch`, `position`); the caller stops at its last step."""
        while True:
            start, usable = self.position, 0
            if self.streaming:
                self.dataset.set_epoch(self.epoch)  # another shuffle each pass
                # A resumed stream is read again from the start of its pass; the batches already trained on are
                # decoded and dropped (the order is the same: same seed, same pass, same settings).
                batches = itertools.islice(self.loader, start, None)
            else:
                self.loader.set_epoch(self.epoch)
                batches = self.accelerator.skip_first_batches(self.loader, start) if start else self.loader
            for batch in batches:
                self.position += 1
                bad = batch.pop("bad_images")
                self.bad_images.update(dict.fromkeys(bad))
                rows = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
                found = BAD_IMAGE if bad and not self.data.skip_bad_images else ALL_BAD if rows == 0 else USABLE
                if self._agree(found, bad) == ALL_BAD:  # every image of some process's batch was bad: all skip it
                    continue
                usable += 1
                yield send_to_device(batch, self.accelerator.device) if self.streaming else batch
            if start == 0 and usable == 0:  # a whole pass without one usable batch: another pass would not help
                self._agree(EMPTY_PART, [])  # raises, on every process
            self.epoch, self.position = self.epoch + 1, 0

    def _agree(self, found: int, bad: list) -> int:
        """The worst of what each process `found` in its micro-batch (or in its whole pass: EMPTY_PART), so that
        every process takes the same decision: one that stopped alone would leave the others waiting forever. A
        collective that pairs with the other processes' for their own micro-batch, wherever they are in their parts
        (a stream's parts differ in length). A bad image or an empty part stops every process with the same one-line
        message (that of the first process that found it)."""
        worst = int(self.accelerator.gather(torch.tensor([found], device=self.accelerator.device)).max())
        if worst < BAD_IMAGE:
            return worst
        mine = None if found != worst else self._bad_message(bad) if worst == BAD_IMAGE else self._empty_message()
        raise agreed(self.accelerator, ValueError(next(message for message in gather_object([mine]) if message)))

    def _bad_message(self, bad: list) -> str:
        found = list_checkpoints(self.run.output_dir)
        then = (f"then continue from {found[-1].name} with --resume_from_checkpoint latest" if found else
                "then start the run again")
        return (f"Bad training image: {bad[0]}. Fix or remove it, or pass --skip_bad_images to skip such images "
                f"(counted and listed), {then}.")

    def _empty_message(self) -> str:
        """Why a pass of this process's part read no usable batch, and what to do (one line)."""
        data, processes = self.data, self.accelerator.num_processes
        whose = f"'s part for process {self.accelerator.process_index} of {processes}" if processes > 1 else ""
        what = (f"no usable image: {len(self.bad_images)} bad ones were skipped, e.g. {next(iter(self.bad_images))}"
                if self.bad_images else "no image")
        held = self.streaming and not data.eval_split
        if held:
            what += f" once the first {data.max_eval_samples} (--max_eval_samples) are held out"
        if self.streaming and processes > 1:
            advice = ("Use fewer processes, more data files or images (a stream is split between processes by whole "
                      "files when their number divides by the process count, else image by image), or leave out "
                      "--streaming")
        else:
            advice = "Add images" + (" or lower --max_eval_samples" if held else "")
        if self.bad_images:
            advice = f"Fix or replace the bad images, or: {advice[0].lower()}{advice[1:]}"
        return f"The training {'stream' if self.streaming else 'data'}{whose} holds {what}. {advice}."

    def _too_few_message(self, images: int) -> str:
        processes, size = self.accelerator.num_processes, self.run.train_batch_size
        if processes == 1:
            return f"{images} training images are fewer than one batch of {size}."
        return (f"{images} training images are fewer than one batch of {size} for each of the {processes} processes "
                "(--train_batch_size is per process): use fewer processes or a smaller --train_batch_size.")

    def state(self) -> dict:
        """Where every process is (pass, micro-batches read in it) and the bad images met so far (a collective:
        call it on all processes)."""
        here = torch.tensor([[self.epoch, self.position]], device=self.accelerator.device)
        return {"positions": self.accelerator.gather(here).tolist(), "bad_images": self.all_bad_images()}

    def restore(self, saved: dict | None, step: int) -> None:
        """Continue where a checkpoint's `state()` was; older checkpoints give only their step."""
        if saved is None:
            if self.streaming:
                raise TrainingError("This checkpoint does not record where the stream was; resume it without "
                                    "--streaming.")
            saved = {"positions": [[step // self.steps_per_epoch,
                                    (step % self.steps_per_epoch) * self.run.gradient_accumulation_steps]]}
        positions = saved["positions"]
        if self.streaming and len(positions) != self.accelerator.num_processes:
            raise TrainingError(f"The checkpoint was written by {len(positions)} processes, each reading its own part "
                                f"of the stream; resume it with {len(positions)} processes, not "
                                f"{self.accelerator.num_processes}.")
        # Prepared data: every process is at the same place.
        self.epoch, self.position = positions[self.accelerator.process_index if self.streaming else 0]
        self.bad_images.update(dict.fromkeys(saved.get("bad_images", [])))

    def all_bad_images(self) -> list:
        """The bad images every process met, each once (a collective)."""
        return list(dict.fromkeys(gather_object(list(self.bad_images))))
