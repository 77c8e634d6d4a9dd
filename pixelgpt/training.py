"""Training PixelGPT: the flags, data loading and checks, transforms, checkpoints, evaluation, sample grids and
the training loop behind `examples/train.py` and `pixelgpt train` (the same flags; `--help` lists them).

    accelerate launch examples/train.py --output_dir pixelgpt-fashion          # built-in Fashion-MNIST subset
    accelerate launch examples/train.py --train_data_dir ./my_images --resolution 32 --quantization rgb
    pixelgpt train --dataset_name user/dataset --image_column img --label_column cls --class_conditional
    pixelgpt train --task inpaint                      # any-order model: inpaint, outpaint, vary
    pixelgpt train --train_data_dir emoji --task colorize --quantization rgb --num_levels 4
    pixelgpt train --task upscale --resolution 28 --condition_size 7 --quantization gray8
    pixelgpt train --train_data_dir photos --source_dir sketches --task translate   # paired folders

Plain `python examples/train.py` (or `pixelgpt train`) runs one process; `accelerate launch` adds multi-process /
mixed precision.
"""

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    send_to_device,
    set_seed,
)
from datasets import ClassLabel, DatasetDict, IterableDataset, IterableDatasetDict, Value, load_dataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .default_data import DEFAULT_DATASET_NAME, load_default_dataset
from .modeling import PIXELGPT_PRESETS, PixelGPTConfig, PixelGPTForImageGeneration
from .modeling.configuration_pixelgpt import (
    CONDITIONAL_TASKS,
    FILL_ORDERS,
    MAX_CLASSES,
    PIXELGPT_TASKS,
)
from .modeling.configuration_pixelgpt_vqvae import PixelGPTVQVAEConfig
from .modeling.layouts_pixelgpt import task_inputs
from .modeling.modeling_pixelgpt_vqvae import PixelGPTVQVAE
from .processing import PixelGPTImageProcessor
from .processing.image_processing_pixelgpt import CONDITION_QUANTIZATIONS, QUANTIZATIONS, RESAMPLE, RESIZE_MODES
from .utils import IMAGE_EXTENSIONS, TrainingError, image_key, make_image_grid, open_image, write_model_card

logger = get_logger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def add_data_arguments(p: argparse.ArgumentParser):
    """The data flags both training scripts share (this one and the tokenizer's); returns the group."""
    data = p.add_argument_group("data (default: the built-in Fashion-MNIST subset)")
    data.add_argument("--train_data_dir",
                      help="Folder of images (datasets 'imagefolder'); sub-folders become class labels.")
    data.add_argument("--dataset_name", help="A datasets Hub name or local dataset path.")
    data.add_argument("--dataset_config_name", help="Configuration name of --dataset_name.")
    data.add_argument("--cache_dir", help="Where datasets caches downloads.")
    data.add_argument("--image_column", default="image", help="Column holding the images.")
    data.add_argument("--split", default="train", help="Split to train on.")
    data.add_argument("--eval_split", default=None,
                      help="Held-out split (default: 'test' or 'validation' if present, else --eval_fraction of "
                      "train).")
    data.add_argument("--eval_fraction", type=float, default=0.05,
                      help="Share of train held out when no eval split exists.")
    data.add_argument("--max_train_samples", type=int, help="Use only this many training images.")
    data.add_argument("--max_eval_samples", type=int, default=500,
                      help="Evaluate on at most this many held-out images.")
    data.add_argument("--skip_bad_images", action="store_true",
                      help="Skip unreadable/too-small images (counted, and listed in skipped_*_images.txt at the "
                      "end) instead of stopping at the first one.")
    data.add_argument("--streaming", action="store_true",
                      help="Stream the data (a datasets IterableDataset) instead of preparing it: training starts "
                      "at once whatever the size, the order is shuffled through --shuffle_buffer_size images, each "
                      "process reads its own part. Needs --max_train_steps.")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000,
                      help="--streaming: images held in the shuffle buffer (more: better mixing, more memory).")
    return data


def add_run_arguments(p: argparse.ArgumentParser, learning_rate: float, batch_size: int) -> None:
    """Optimisation, logging, checkpoint and Hub flags both training scripts share."""
    train = p.add_argument_group("training")
    train.add_argument("--output_dir", default="pixelgpt-output", help="Where model, card, samples and checkpoints go.")
    train.add_argument("--seed", type=int, default=0, help="Seed for initialisation, data order and sampling.")
    train.add_argument("--train_batch_size", type=int, default=batch_size, help="Images per device per step.")
    train.add_argument("--eval_batch_size", type=int, default=64, help="Images per device per evaluation step.")
    train.add_argument("--num_epochs", type=int, default=2, help="Passes over the training set.")
    train.add_argument("--max_train_steps", type=int, help="Stop after this many optimizer steps (overrides epochs).")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    train.add_argument("--learning_rate", type=float, default=learning_rate, help="Peak learning rate.")
    train.add_argument("--lr_warmup_steps", type=int, default=100, help="Linear warm-up steps before cosine decay.")
    train.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    train.add_argument("--adam_beta2", type=float, default=0.95, help="AdamW beta2.")
    train.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (matrices only).")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    train.add_argument("--use_ema", action="store_true", help="Keep an exponential moving average of the weights.")
    train.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay per optimizer step.")
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                      help="Mixed precision (default: accelerate's config).")
    train.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")

    ev = p.add_argument_group("evaluation, samples, logging")
    ev.add_argument("--eval_steps", type=int, default=500,
                    help="Evaluate on the held-out images every N steps (and at the end).")
    ev.add_argument("--sample_steps", type=int, default=1000, help="Save an image grid every N steps (and at the end).")
    ev.add_argument("--num_samples", type=int, default=16, help="Images in each grid.")
    ev.add_argument("--report_to", default="none", help="accelerate trackers: tensorboard, wandb, all or none.")
    ev.add_argument("--logging_steps", type=int, default=10, help="Log training metrics every N steps.")

    ck = p.add_argument_group("checkpoints")
    ck.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps.")
    ck.add_argument("--checkpoints_total_limit", type=int, default=2,
                    help="Keep at most this many checkpoints (0 keeps every one). Older ones are deleted only after "
                    "a new one is complete.")
    ck.add_argument("--resume_from_checkpoint",
                    help="'latest' (fails if there is none) or a checkpoint-<step> folder to resume from; the model "
                    "and data settings must match the checkpoint's.")

    hub = p.add_argument_group("Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final model folder to the Hub.")
    hub.add_argument("--hub_model_id", help="Repository id (default: the output folder's name).")
    hub.add_argument("--hub_token", help="Hub token (default: the saved login).")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the repository as private.")


def check_run_arguments(p: argparse.ArgumentParser, args) -> None:
    """Refuse impossible values of the shared flags (argparse errors, before anything runs)."""
    if args.train_data_dir and args.dataset_name:
        p.error("give --train_data_dir or --dataset_name, not both")
    for name in ("train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps", "eval_steps",
                 "sample_steps", "checkpointing_steps", "logging_steps", "num_samples", "max_eval_samples",
                 "max_train_steps", "max_train_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.checkpoints_total_limit < 0:
        p.error(f"--checkpoints_total_limit must be >= 1, or 0 to keep every checkpoint; got "
                f"{args.checkpoints_total_limit}")
    if not math.isfinite(args.learning_rate) or args.learning_rate <= 0:
        p.error(f"--learning_rate must be a finite number > 0, got {args.learning_rate}")
    for name in ("weight_decay", "max_grad_norm"):  # NaN fails every comparison, so test for what is accepted
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            p.error(f"--{name} must be a finite number >= 0 (0 turns it off), got {getattr(args, name)}")
    if args.lr_warmup_steps < 0:
        p.error(f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    if not 0 <= args.ema_decay < 1:
        p.error(f"--ema_decay must be in [0, 1), got {args.ema_decay}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:
            p.error(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    if not 0 < args.eval_fraction < 1:
        p.error("--eval_fraction must be in (0, 1)")
    if args.shuffle_buffer_size < 1:
        p.error(f"--shuffle_buffer_size must be >= 1, got {args.shuffle_buffer_size}")
    if args.streaming and args.max_train_steps is None:
        p.error("--streaming needs --max_train_steps (a stream has no known length, so epochs cannot set it)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_data_arguments(p)
    data.add_argument("--label_column", default=None,
                      help="Column of integer or ClassLabel labels (default: 'label' when the data has it).")
    data.add_argument("--source_column", help="--task translate: the column of source images (the image column "
                      "holds the targets).")
    data.add_argument("--source_dir", help="--task translate with --train_data_dir: a folder of source images with "
                      "the same relative file names as the target images.")

    proc = p.add_argument_group("image processor")
    proc.add_argument("--resolution", type=int, default=None, help="Side of the square training images (default: 28 "
                      "for the built-in data, else 32).")
    proc.add_argument("--quantization", default="gray", choices=QUANTIZATIONS,
                      help="Token scheme: N-level gray/rgb, lossless 8-bit gray8/rgb8, or a k-means palette.")
    proc.add_argument("--num_levels", type=int, default=8, help="Levels per channel for gray/rgb quantization.")
    proc.add_argument("--fit_palette", action="store_true", help="Learn a k-means palette from training images "
                      "(implies --quantization palette).")
    proc.add_argument("--palette_size", type=int, default=256, help="Colours in the learned palette.")
    proc.add_argument("--palette_samples", type=int, default=1000, help="Training images sampled to fit the palette.")
    proc.add_argument("--resize_mode", default="crop", choices=RESIZE_MODES, help="Resize policy.")
    proc.add_argument("--resample", default="bicubic", choices=sorted(RESAMPLE),
                      help="Resampling filter used when resizing.")
    proc.add_argument("--tokenizer", help="A trained image tokenizer (folder or Hub id, from train_tokenizer.py): "
                      "model its token grid instead of pixels (images are encoded once, before training; the saved "
                      "model carries the tokenizer). --resolution defaults to the tokenizer's; --quantization and "
                      "--num_levels are unused; condition images (colorize, upscale, translate) stay pixels.")

    model = p.add_argument_group("model")
    model.add_argument("--task", default="generate", choices=PIXELGPT_TASKS,
                       help="generate: raster-order model; inpaint: random-order model (inpainting, outpainting, "
                       "variations); colorize / upscale: learn images from their own grayscale / low-resolution "
                       "version; translate: learn targets from paired source images.")
    model.add_argument("--inpaint_box_probability", type=float, default=1.0,
                       help="--task inpaint: share of training orders that leave a random rectangle for last; the "
                       "rest are wholly random orders (raster orders with --inpaint_fill_order raster_both).")
    model.add_argument("--inpaint_box_sides", type=float, nargs=2, default=[0.0, 1.0], metavar=("LOW", "HIGH"),
                       help="--task inpaint: the training rectangles' height and width are uniform between these "
                       "fractions of the image side (at least 1 pixel; default 0 1: any size). 0.25 0.75 spends the "
                       "training on object-sized holes, the masks transform_quality.py measures (README).")
    model.add_argument("--inpaint_box_warmup", type=float, default=0.0,
                       help="--task inpaint: share of the training steps over which the share of orders with a "
                       "rectangle rises linearly from 0 to --inpaint_box_probability, as RAR anneals its orders (with "
                       "--inpaint_fill_order raster_both, the orders without one are the raster order); 0 = none.")
    model.add_argument("--inpaint_hole_weight", type=float, default=1.0,
                       help="--task inpaint: weight of the rectangle's pixels in the training loss against the pixels "
                       "read before them (1 = all alike); above 1 spends more of the training on filling holes.")
    model.add_argument("--inpaint_fill_order", default="raster", choices=FILL_ORDERS,
                       help="--task inpaint: order of the pixels left for last (rectangles in training, holes when "
                       "inpainting): raster (row by row; better likelihood at the same budget) or random; raster_both "
                       "also reads the known pixels row by row (slightly better likelihood, worse samples: README).")
    model.add_argument("--aligned_condition", action=argparse.BooleanOptionalAction, default=True,
                       help="Conditional tasks: add the condition pixel under each predicted pixel to its row "
                       "(--no-aligned_condition: attention alone finds it).")
    model.add_argument("--condition_prefix", action=argparse.BooleanOptionalAction, default=True,
                       help="Conditional tasks: also put the condition tokens before the image, for attention to read.")
    model.add_argument("--condition_quantization", choices=CONDITION_QUANTIZATIONS, default=None,
                       help="How condition images are tokenized (default: gray8 for colorize, else gray8 for gray "
                       "quantizations without --tokenizer and rgb otherwise).")
    model.add_argument("--condition_num_levels", type=int, default=8, help="Levels per channel of gray/rgb conditions.")
    model.add_argument("--condition_size", type=int, default=None,
                       help="Side of the condition grid (default: resolution/4 for upscale, else the resolution).")
    model.add_argument("--model_size", default="tiny", choices=sorted(PIXELGPT_PRESETS), help="Size preset.")
    model.add_argument("--hidden_size", type=int, help="Override the preset's width.")
    model.add_argument("--num_hidden_layers", type=int, help="Override the preset's depth.")
    model.add_argument("--num_attention_heads", type=int, help="Override the preset's head count.")
    model.add_argument("--intermediate_size", type=int, help="Override the MLP width.")
    model.add_argument("--class_conditional", action="store_true", help="Condition on the label column (class tokens).")
    model.add_argument("--class_embedding", action=argparse.BooleanOptionalAction, default=True,
                       help="With --class_conditional: add a class embedding to every row (--no-class_embedding: the "
                       "class is only the start token).")
    model.add_argument("--class_dropout_prob", type=float, default=0.1,
                       help="With --class_conditional: share of images trained with the unconditional start token, "
                            "which classifier-free guidance (generate_images(guidance_scale=...)) needs.")
    model.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for activation memory.")
    model.add_argument("--parallel_tokens", type=int, default=1,
                       help="Also train k-ahead prediction for this k, so the model can draw k tokens per forward pass "
                            "(generate_images(tokens_per_step=k)); 1 = one token per pass only.")
    model.add_argument("--parallel_fraction", type=float, default=0.5,
                       help="Share of training steps that use k-ahead prediction when --parallel_tokens > 1.")

    add_run_arguments(p, learning_rate=2e-3, batch_size=32)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    if args.fit_palette:
        args.quantization = "palette"
    elif args.quantization == "palette":
        p.error("--quantization palette needs --fit_palette (the palette is learned from the training images)")
    if args.tokenizer:
        if args.fit_palette:
            p.error("--fit_palette does not combine with --tokenizer (the tokenizer makes the tokens)")
    elif args.resolution is None:  # with a tokenizer: the tokenizer's own, once it is loaded
        args.resolution = 28 if not (args.train_data_dir or args.dataset_name) else 32
    if not 1 <= args.parallel_tokens <= 64:
        p.error("--parallel_tokens must be in [1, 64]")
    if not 0 < args.parallel_fraction <= 1:
        p.error("--parallel_fraction must be in (0, 1]")
    if not 0 <= args.class_dropout_prob <= 1:
        p.error("--class_dropout_prob must be in [0, 1]")
    if args.parallel_tokens > 1 and args.task != "generate":
        p.error("--parallel_tokens needs --task generate (k-ahead decoding is raster order)")
    if not 0 <= args.inpaint_box_probability <= 1:
        p.error("--inpaint_box_probability must be in [0, 1]")
    if not 0 <= args.inpaint_box_warmup <= 1:
        p.error("--inpaint_box_warmup must be in [0, 1]")
    low, high = args.inpaint_box_sides
    if not 0 <= low <= high <= 1 or high == 0:
        p.error(f"--inpaint_box_sides must be two fractions of the image side with 0 <= LOW <= HIGH <= 1 and HIGH > 0, "
                f"got {low} {high}")
    if not 0 < args.inpaint_hole_weight <= 100:
        p.error("--inpaint_hole_weight must be in (0, 100]")
    if args.task == "translate":
        if not (args.source_column or args.source_dir):
            p.error("--task translate needs paired source images: --source_column (a dataset column) or "
                    "--source_dir (a folder mirroring --train_data_dir)")
        if args.source_dir and not args.train_data_dir:
            p.error("--source_dir pairs with --train_data_dir (the folder of target images)")
        if args.source_dir and args.source_column:
            p.error("give --source_column or --source_dir, not both")
        if args.source_dir and args.streaming:
            p.error("--source_dir pairs files by listing both folders, which --streaming does not do; put the "
                    "sources in a dataset column (--source_column) to stream them")
        if args.source_dir:
            args.source_column = "source"  # the column that pairing with --source_dir adds
    elif args.source_column or args.source_dir:
        p.error("--source_column / --source_dir are for --task translate")
    if args.task in CONDITIONAL_TASKS:
        if args.tokenizer and args.resolution is None:
            p.error(f"--task {args.task} with --tokenizer needs --resolution (the images' side in pixels), from "
                    "which --condition_size defaults")
        if args.class_conditional:
            p.error(f"--class_conditional does not combine with --task {args.task}")
        if args.condition_quantization is None:
            # With a tokenizer the images are colour (--quantization is unused): an RGB condition unless colorizing.
            gray = args.task == "colorize" or (not args.tokenizer and args.quantization in ("gray", "gray8"))
            args.condition_quantization = "gray8" if gray else "rgb"
        if args.condition_size is None:
            args.condition_size = max(1, args.resolution // 4) if args.task == "upscale" else args.resolution
        if not 1 <= args.condition_size <= 256:
            p.error("--condition_size must be in [1, 256]")
        if not (args.aligned_condition or args.condition_prefix):
            p.error("--no-aligned_condition with --no-condition_prefix leaves the model no way to read its condition")
    return args


# ----------------------------------------------------------------------------------------------------- data
def load_splits(args):
    """Returns (train, held-out rows, dataset name for the card). `train` is a `Dataset`, or with --streaming an
    `IterableDataset` that nothing has read yet; the held-out images (at most --max_eval_samples) are a list of rows.
    Image columns stay undecoded (bytes/path): training images are decoded as batches are made (`make_collate`)."""
    stream = dict(streaming=True) if args.streaming else {}
    if args.train_data_dir:
        root = Path(args.train_data_dir)
        if not root.is_dir():
            raise ValueError(f"--train_data_dir {root} is not a folder.")
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in root.rglob("*") if f.is_file()):
            raise ValueError(f"--train_data_dir {root} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        dataset, name = load_dataset("imagefolder", data_dir=str(root), cache_dir=args.cache_dir, **stream), None
        if args.source_dir:  # pair before splitting, so that every missing source is reported at once
            dataset = pair_with_sources(dataset, args)
    elif args.dataset_name:
        dataset = load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, **stream)
        # A Hub id names the data on the card; a local path would put this machine's folders into a public card.
        name = None if Path(args.dataset_name).expanduser().exists() else args.dataset_name
    else:
        dataset, name = load_default_dataset(args.streaming), DEFAULT_DATASET_NAME
    if not isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        dataset = DatasetDict({args.split: dataset})
    if args.split not in dataset:
        raise ValueError(f"Split {args.split!r} not found; the data has splits {sorted(dataset)}.")
    eval_split = args.eval_split or next((s for s in ("test", "validation") if s in dataset and s != args.split), None)
    if args.eval_split and args.eval_split not in dataset:
        raise ValueError(f"--eval_split {args.eval_split!r} not found; the data has splits {sorted(dataset)}.")
    train = dataset[args.split]
    if not args.streaming and len(train) == 0:
        raise ValueError(f"Split {args.split!r} has no rows.")
    if eval_split:
        held_out = dataset[eval_split]
    elif args.streaming:  # a stream cannot be split at random: its first images are held out, the rest trained on
        held_out = train.take(args.max_eval_samples)
    else:
        parts = train.train_test_split(test_size=args.eval_fraction, seed=args.seed)
        train, held_out = parts["train"], parts["test"]
    columns = [args.image_column] + ([args.source_column] if args.source_column else [])
    for split in (train, held_out):
        # A stream may not know its columns before its first row; reading one row is cheap.
        names = split.column_names or list(next(iter(split), {}))
        if args.image_column not in names:
            raise ValueError(f"Image column {args.image_column!r} not found; columns are {names}.")
        for column in columns[1:]:
            if column not in names:
                raise ValueError(f"Source column {column!r} not found; columns are {names}.")
    if args.max_train_samples:
        train = train.take(args.max_train_samples) if args.streaming else train.select(
            range(min(args.max_train_samples, len(train))))
    held_out = held_out.take(args.max_eval_samples) if args.streaming else held_out.select(
        range(min(args.max_eval_samples, len(held_out))))
    for column in columns:
        if isinstance((train.features or {}).get(column), ImageFeature):  # decode ourselves, naming bad files
            train = train.cast_column(column, ImageFeature(decode=False))
            held_out = held_out.cast_column(column, ImageFeature(decode=False))
    held_out = list(held_out)
    if not held_out:
        raise ValueError("There are no held-out images to evaluate on (the eval split is empty).")
    if args.streaming and not eval_split:
        # Leave the held-out images out by content, not with `skip()`: a skip is divided among the files when
        # processes or DataLoader workers split the stream, and it stops the files' order from being shuffled.
        held = {image_key(row[args.image_column]) for row in held_out}
        train = train.filter(lambda value: image_key(value) not in held, input_columns=args.image_column)
    return train, held_out, name



def pair_with_sources(dataset: DatasetDict, args) -> DatasetDict:
    """Add the source column: for each target image, the file of the same relative path (any image extension)
    under --source_dir."""
    root, sources = Path(args.train_data_dir).resolve(), Path(args.source_dir)
    if not sources.is_dir():
        raise ValueError(f"--source_dir {sources} is not a folder.")
    paired, missing, total = {}, [], 0
    for split, rows in dataset.items():
        paired[split] = []
        for value in rows.cast_column(args.image_column, ImageFeature(decode=False))[args.image_column]:
            relative = Path(value["path"]).resolve().relative_to(root)
            match = sources / relative
            if not match.is_file():
                candidates = sorted(match.parent.glob(match.stem + ".*"))  # same name, another image format
                match = candidates[0] if candidates else None
            if match is None:
                missing.append(str(relative))
            paired[split].append(str(match) if match else None)
            total += 1
    if missing:
        raise ValueError(f"{len(missing)} of {total} target images have no source image of the same name under "
                         f"--source_dir {sources}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return DatasetDict({split: rows.add_column(args.source_column, paired[split]) for split, rows in dataset.items()})


def resolve_label_column(args, dataset):
    column = args.label_column or ("label" if "label" in dataset.column_names else None)
    if column is None:
        if args.class_conditional:
            raise ValueError(f"--class_conditional needs a label column; columns are {dataset.column_names}.")
        return None, 0, None
    if column not in dataset.column_names:
        raise ValueError(f"Label column {column!r} not found; columns are {dataset.column_names}.")
    feature = (dataset.features or {}).get(column)
    if isinstance(feature, ClassLabel):
        return column, feature.num_classes, list(feature.names)
    if isinstance(dataset, IterableDataset):  # the labels cannot be read up front to count the classes
        raise ValueError(f"With --streaming, --class_conditional needs a ClassLabel label column (the number of "
                         f"classes must be known before the stream is read); {column!r} is {feature!r}. Cast it "
                         "with `dataset.cast_column(column, ClassLabel(names=[...]))`.")
    if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        labels = dataset[column]
        if min(labels) < 0 or max(labels) >= MAX_CLASSES:
            bad = min(labels) if min(labels) < 0 else max(labels)
            raise ValueError(f"Label column {column!r} holds label {bad}; labels must be class indices "
                             f"0..num_classes-1 with at most {MAX_CLASSES} classes (turn other ids into indices "
                             "with `dataset.class_encode_column`).")
        return column, max(labels) + 1, None
    raise ValueError(f"Label column {column!r} has type {feature!r}; expected a ClassLabel or integer column "
                     "(encode string labels with `dataset.class_encode_column`).")


def read_image(value, where: str, processor, resolution: int) -> tuple[Image.Image, np.ndarray]:
    """Decode one image and check that it can be used: (the image, its processed `(H, W, C)` uint8 pixels), or a
    ValueError naming the file (unreadable, truncated, an unsupported mode, smaller than `resolution`)."""
    image = open_image(value, where)
    name = image.info["pixelgpt_name"]
    if min(image.size) < resolution:
        raise ValueError(f"{name}: {image.width}x{image.height} is smaller than --resolution {resolution}")
    try:
        return image, processor.to_array(image)[0]
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def check_images(rows: list, column, processor, resolution, split_name, skip_bad, output_dir) -> list:
    """The held-out rows whose image (in `column`) can be used: decoded once, as there are at most
    --max_eval_samples of them. Raises naming the bad files, or leaves them out with `skip_bad` (and lists them)."""
    problems, good = [], []
    for i, row in enumerate(rows):
        try:
            read_image(row[column], f"{split_name}[{i}]", processor, resolution)
            good.append(row)
        except ValueError as err:
            problems.append(str(err))
    if not problems:
        return rows
    if not skip_bad:
        raise ValueError(f"{len(problems)} bad image(s) in {split_name}:\n  {_listing(problems)}\n"
                         "Fix or remove them, or pass --skip_bad_images to skip them.")
    write_skipped(output_dir, split_name, problems, len(rows))
    if not good:
        raise ValueError(f"Every image in {split_name} is bad:\n  {_listing(problems)}")
    return good


def _listing(problems: list) -> str:
    return "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")


def write_skipped(output_dir, split_name: str, problems: list, total: int | None = None) -> None:
    """List skipped images in `skipped_<split>_images.txt` and say how many were skipped."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    Path(output_dir, f"skipped_{split_name}_images.txt").write_text("\n".join(problems) + "\n")
    of = f" of {total}" if total else ""
    logger.warning(f"Skipped {len(problems)}{of} {split_name} images (listed in skipped_{split_name}_images.txt):"
                   f"\n  {_listing(problems)}", main_process_only=True)


def load_tokenizer(args) -> PixelGPTVQVAE:
    """The `--tokenizer` model (a folder or Hub id); settles `--resolution` (default: the tokenizer's own)."""
    hint = "Give the output folder (or Hub id) of examples/train_tokenizer.py."
    try:
        model_type = PixelGPTVQVAEConfig.get_config_dict(args.tokenizer)[0].get("model_type")
        if model_type != PixelGPTVQVAEConfig.model_type:  # loading it anyway would train on random codes
            raise ValueError(f"--tokenizer {args.tokenizer} holds a {model_type!r} model, not a PixelGPT image "
                             f"tokenizer ({PixelGPTVQVAEConfig.model_type!r}). {hint}")
        tokenizer = PixelGPTVQVAE.from_pretrained(args.tokenizer).eval()
    except OSError as err:
        raise ValueError(f"--tokenizer {args.tokenizer}: no PixelGPT tokenizer could be loaded from it ({err}). "
                         f"{hint}") from None
    # The saved model's config carries the tokenizer's: a Hub id may name it there, a local path would put this
    # machine's folders into a file that may be pushed.
    tokenizer.config.name_or_path = "" if Path(args.tokenizer).expanduser().exists() else args.tokenizer
    factor = tokenizer.config.downsample_factor
    args.resolution = args.resolution or tokenizer.config.image_size
    if args.resolution % factor:
        raise ValueError(f"--resolution {args.resolution} must be a multiple of the tokenizer's downsampling factor "
                         f"({factor}).")
    return tokenizer


def encode_with_tokenizer(dataset, tokenizer, processor, args, split_name, batch_size: int = 64):
    """Add a `token_ids` column: every image encoded once by the tokenizer, not at every step (and, for the
    conditional tasks, `condition_ids`: the processor's tokens of each row's condition image, see `read_row`).
    `datasets` caches the result beside a file-backed dataset under a fingerprint of the data, the tokenizer's
    weights, the processor and the task, so a second run on the same data reads it back. Returns (dataset, bad
    images): unusable images are left out with --skip_bad_images, else stop the run."""
    conditional = args.task in CONDITIONAL_TASKS
    digest = hashlib.sha256(dataset._fingerprint.encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().float().numpy().tobytes())
    digest.update(json.dumps([processor.to_dict(), args.task, args.source_column], sort_keys=True,
                             default=str).encode())
    blank = (np.zeros((args.resolution, args.resolution, 3), np.uint8), Image.new("RGB", (1, 1)))

    def encode(batch):
        pixels, sources, problems = [], [], []
        for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
            try:
                array, source = read_row(row, processor, args)
                problems.append("")
            except ValueError as err:  # a placeholder row, dropped below
                array, source = blank
                problems.append(str(err))
            pixels.append(array)
            sources.append(source)
        ids = tokenizer.encode(PixelGPTVQVAE.to_pixel_values(torch.from_numpy(np.stack(pixels))))  # (b, h, w)
        out = {"token_ids": ids.flatten(1).to(torch.int32).numpy(), "problem": problems}
        if conditional:
            out["condition_ids"] = processor.encode_condition(sources, return_tensors="np").condition_ids
        return out

    dataset = dataset.map(encode, batched=True, batch_size=batch_size, new_fingerprint=digest.hexdigest()[:32],
                          desc=f"Encoding {split_name} images with the tokenizer")
    problems = [p for p in dataset["problem"] if p]
    if problems and not args.skip_bad_images:
        raise ValueError(f"Bad {split_name} image: {problems[0]}" + (f" (and {len(problems) - 1} more)" if
                         len(problems) > 1 else "") + ". Fix or remove it, or pass --skip_bad_images to skip such "
                         "images (counted and listed).")
    if problems:
        dataset = dataset.filter(lambda problem: not problem, input_columns="problem")
    return dataset.remove_columns("problem"), problems


def read_row(row: dict, processor, args) -> tuple[np.ndarray, Image.Image]:
    """One training row: its image's processed `(H, W, C)` uint8 pixels and the condition image the conditional
    tasks read (the image itself for colorize and upscale, the source image for translate). A ValueError names
    an unusable file."""
    image, array = read_image(row[args.image_column], "image", processor, args.resolution)
    if args.task == "translate":
        image = read_image(row[args.source_column], "source", processor.condition_processor, args.condition_size)[0]
    return array, image


def make_collate(processor, config, args, label_column, tokenizer=None):
    """The DataLoader's `collate_fn`: undecoded rows -> a batch (`input_ids`, `condition_ids` for the conditional
    tasks, and `bad_images`). Images are decoded here, in DataLoader workers when there are some, never all before
    training; a row whose image cannot be used is left out of the batch and named in `bad_images`. Rows encoded
    ahead by a tokenizer (`token_ids`) are used as they are; `tokenizer` encodes the others (a stream)."""
    def collate(rows):
        pixels, sources, tokens, conditions, labels, bad = [], [], [], [], [], []
        for row in rows:
            if "token_ids" in row:  # encoded once by the image tokenizer (`encode_with_tokenizer`)
                tokens.append(np.asarray(row["token_ids"]))
                conditions.append(row.get("condition_ids"))
            else:
                try:
                    array, source = read_row(row, processor, args)
                except ValueError as err:
                    bad.append(str(err))
                    continue
                pixels.append(array)
                sources.append(source)
            if label_column:
                labels.append(config.class_token_id(row[label_column]))
        if pixels:  # (b, H, W, C) uint8
            pixels = np.stack(pixels)
            if tokenizer is not None:
                with torch.no_grad():
                    ids = tokenizer.encode(PixelGPTVQVAE.to_pixel_values(torch.from_numpy(pixels)))  # (b, h, w)
                tokens = list(ids.flatten(1).numpy())
            else:
                tokens = list(processor.quantize(pixels))
        start = labels if label_column else [config.start_token_id] * len(tokens)
        input_ids = torch.cat([torch.tensor(start, dtype=torch.long).view(-1, 1), torch.as_tensor(
            np.array(tokens), dtype=torch.long).view(len(start), config.num_image_tokens)], dim=1)  # (b, 1 + N)
        batch = {"input_ids": input_ids, "bad_images": bad}
        if config.is_conditional:
            ids = processor.encode_condition(sources, return_tensors="np").condition_ids if sources else conditions
            batch["condition_ids"] = torch.as_tensor(np.array(ids), dtype=torch.long).view(
                len(start), config.num_condition_tokens)
        return batch

    return collate


class TrainingBatches:
    """The training batches of a run, pass after pass, and where this process is in them (saved in checkpoints).

    A prepared `Dataset` is shuffled by accelerate's seedable sampler and split across processes by accelerate. A
    streamed `IterableDataset` is shuffled through a buffer (reshuffled each pass) and split with
    `split_dataset_by_node`: each process reads its own part and moves its batches to its device. Rows are decoded
    by the collate function as batches are made; bad images are counted in `bad_images` or stop the run."""

    def __init__(self, args, accelerator, train, collate):
        self.accelerator, self.args = accelerator, args
        self.streaming, self.epoch, self.position = args.streaming, 0, 0  # position: micro-batches read this pass
        self.bad_images: dict[str, None] = {}  # an ordered set: an image met again in the next pass counts once
        # Each loader has its own generator: creating an iterator (every pass, the skipping loader of a resumed run)
        # then never draws from torch's global RNG, which training randomness relies on.
        loader = dict(batch_size=args.train_batch_size, collate_fn=collate, num_workers=args.dataloader_num_workers,
                      generator=torch.Generator().manual_seed(args.seed))
        if self.streaming:
            train = train.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
            self.dataset = split_dataset_by_node(train, accelerator.process_index, accelerator.num_processes)
            # No drop_last: each DataLoader worker batches its own files, and would drop its own remainder.
            self.loader, self.steps_per_epoch = torch.utils.data.DataLoader(self.dataset, **loader), None
        else:
            loader = torch.utils.data.DataLoader(train, shuffle=True, drop_last=True, **loader)
            if len(loader) == 0:
                raise ValueError(f"{len(train)} training images are fewer than one batch of {args.train_batch_size}.")
            self.loader = accelerator.prepare(loader)
            self.steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps /
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
                # Every process takes the same decision, or the others would wait for it forever.
                worst = self.accelerator.gather(torch.tensor([2 if bad and not self.args.skip_bad_images else
                                                              int(rows == 0)], device=self.accelerator.device))
                if worst.max().item() == 2:
                    raise ValueError(self._bad_message(bad))
                if worst.max().item() == 1:  # every image of some process's batch was bad: all skip this micro-batch
                    continue
                usable += 1
                yield send_to_device(batch, self.accelerator.device) if self.streaming else batch
            if start == 0 and usable == 0:  # a whole pass without one usable batch: another pass would not help
                raise ValueError(self._empty_message())
            self.epoch, self.position = self.epoch + 1, 0

    def _bad_message(self, bad: list) -> str:
        found = list_checkpoints(self.args.output_dir)
        then = (f"then continue from {found[-1].name} with --resume_from_checkpoint latest" if found else
                "then start the run again")
        where = (f"Bad training image: {bad[0]}." if bad else
                 "Another process met a bad training image (see its message).")
        return (f"{where} Fix or remove it, or pass --skip_bad_images to skip such images (counted and listed), "
                f"{then}.")

    def _empty_message(self) -> str:
        what = f"fewer than one batch of {self.args.train_batch_size} images"
        if self.bad_images:
            what = f"no usable image: {len(self.bad_images)} bad ones were skipped, e.g. {next(iter(self.bad_images))}"
        held = " after the first --max_eval_samples held out" if self.streaming and not self.args.eval_split else ""
        part = (f" in this process's part (process {self.accelerator.process_index} of "
                f"{self.accelerator.num_processes}; use fewer processes)" if self.accelerator.num_processes > 1 else "")
        return f"The training data holds {what}{held}{part}."

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
                                    (step % self.steps_per_epoch) * self.args.gradient_accumulation_steps]]}
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


# ----------------------------------------------------------------------------------------------------- output folder
# What a checkpoint is only meaningful with: resuming with another value is refused, naming the setting.
RESUME_SETTINGS = ("resolution", "quantization", "num_levels", "fit_palette", "palette_size", "resize_mode",
                   "task", "condition_quantization", "condition_num_levels", "condition_size", "model_size",
                   "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "class_conditional",
                   "parallel_tokens", "use_ema", "inpaint_fill_order", "aligned_condition", "condition_prefix",
                   "class_embedding", "tokenizer")
# What decides which images a resumed run's position in its data points to (`TrainingBatches`); both training
# scripts record them. The worker count matters only to a stream (each worker reads its own files).
DATA_SETTINGS = ("streaming", "seed", "train_batch_size", "shuffle_buffer_size", "max_eval_samples", "eval_fraction",
                 "eval_split", "split", "max_train_samples")


def data_settings(args) -> dict:
    settings = {name: getattr(args, name) for name in DATA_SETTINGS}
    settings["dataloader_num_workers"] = args.dataloader_num_workers if args.streaming else None
    return settings


# Arguments that never reach a tracker, a log, a card or a file.
SECRET_ARGS = ("hub_token",)
LOCK_NAME = ".pixelgpt-train.lock"


def run_settings(args) -> dict:
    """The RESUME_SETTINGS of this run, with the model size as it resolves (a preset's width given explicitly, or
    the derived MLP width, is the same model)."""
    settings = {name: getattr(args, name) for name in RESUME_SETTINGS} | data_settings(args)
    sizes = dict(PIXELGPT_PRESETS[args.model_size], **{k: settings[k] for k in ("hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size") if settings[k] is not None})
    resolved = PixelGPTConfig(**sizes)
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        settings[name] = getattr(resolved, name)
    return settings


def all_ranks(accelerator, flag: bool) -> bool:
    """True when `flag` holds on every process (a decision every rank must take alike, or the others hang)."""
    flags = accelerator.gather(torch.tensor([flag], device=accelerator.device))
    return bool(flags.all())


def on_main_process(accelerator, action) -> None:
    """Run `action` on the main process; if it raises a TrainingError, every process raises, so that none waits
    forever for a main process that stopped."""
    refusal = None
    if accelerator.is_main_process:
        try:
            action()
        except TrainingError as err:
            refusal = err
    if not all_ranks(accelerator, refusal is None):
        raise refusal or TrainingError("The main process stopped the run (see its message).")


def weights_are_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


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


# ----------------------------------------------------------------------------------------------------- checkpoints
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


def save_checkpoint(accelerator, args, step, ema, settings: dict, data_state: list):
    """Write `checkpoint-<step>` with the run's `settings` (which a resume must match) and where every process is in
    its data (`TrainingBatches.state()`) atomically (into a temporary folder, renamed only once complete); only then
    delete the oldest ones beyond `--checkpoints_total_limit`, so a kill at any moment leaves a complete checkpoint."""
    final = Path(args.output_dir, f"checkpoint-{step}")
    tmp = final.with_name(final.name + ".tmp")
    model = accelerator._models[0]
    finite = weights_are_finite(model) and (ema is None or weights_are_finite(ema))
    if not all_ranks(accelerator, finite):
        raise TrainingError(diverged_message(args, step, "the weights or their moving average (EMA) hold NaN or "
                                                         "infinite values"))
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # refused up front (find_resume_checkpoint); never overwrite a checkpoint
            raise TrainingError(f"{final} already exists; this run would overwrite it. Nothing was changed.")
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if ema is not None:
            # The whole AveragedModel state: weights and `n_averaged` (0 would make the next update a copy).
            save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
        (tmp / "pixelgpt_step.json").write_text(json.dumps({"step": step, "settings": settings, "data": data_state}))
        os.replace(tmp, final)  # atomic on one filesystem: `latest` never sees a half-written checkpoint
        if args.checkpoints_total_limit:
            existing = list_checkpoints(args.output_dir)
            for old in existing[: max(0, len(existing) - args.checkpoints_total_limit)]:
                doomed = old.with_name(old.name + ".old")
                os.replace(old, doomed)  # out of `latest`'s sight before the slow delete
                shutil.rmtree(doomed)
    accelerator.wait_for_everyone()
    return final


def diverged_message(args, step, what) -> str:
    # Every listed checkpoint was checked finite when it was written (`save_checkpoint`).
    found = [p for p in list_checkpoints(args.output_dir) if int(p.name.split("-")[1]) <= step]
    last = f"the last good checkpoint is {found[-1].name}" if found else "no good checkpoint was saved before it"
    return (f"Training diverged at step {step}: {what}. Nothing non-finite was saved; {last}. Lower "
            f"--learning_rate (now {args.learning_rate}), or keep --max_grad_norm > 0 and raise --lr_warmup_steps, "
            "then resume with --resume_from_checkpoint latest.")


def find_resume_checkpoint(args, current: dict) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names, after checking that resuming from it loses nothing and
    means something (its recorded settings equal `current`); None when not resuming."""
    found = list_checkpoints(args.output_dir)
    if not args.resume_from_checkpoint:
        if found:  # a new run would mix its checkpoints with these, and rotation would delete the wrong ones
            raise TrainingError(f"--output_dir {args.output_dir} already holds checkpoints of a run "
                                f"({', '.join(p.name for p in found)}): continue it with --resume_from_checkpoint "
                                "latest, or start afresh in another --output_dir (or move them away).")
        return None
    if args.resume_from_checkpoint == "latest":
        if not found:
            raise TrainingError(f"--resume_from_checkpoint latest: there is no checkpoint in {args.output_dir} to "
                                "resume from. Leave the flag out to start a new run.")
        path = found[-1]
    else:
        path = Path(args.resume_from_checkpoint)
        if not path.exists() and Path(args.output_dir, path).is_dir():  # a bare name: inside --output_dir
            path = Path(args.output_dir, path)
        if not CHECKPOINT_RE.match(path.name) or not path.is_dir():
            raise ValueError(f"--resume_from_checkpoint {path} is not a checkpoint-<step> folder.")
        # Any later checkpoint in --output_dir (wherever the resumed one lives) would be replaced by this run.
        later = [p.name for p in found if int(p.name.split("-")[1]) > int(path.name.split("-")[1])]
        if later:
            raise TrainingError(f"--resume_from_checkpoint {path.name}: {args.output_dir} already has later "
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
        changed = [f"--{name} {saved[name]!r} -> {current[name]!r}" for name in current
                   if name in saved and saved[name] != current[name]]
        if changed:
            raise TrainingError(f"Cannot resume from {path}: it was trained with other settings "
                                f"({'; '.join(changed)}). Resume with the checkpoint's settings, or start a new run "
                                "in another --output_dir.")
    return path


# ----------------------------------------------------------------------------------------------------- run plumbing
# What both training loops (this one and the tokenizer's) do alike.
def adamw(parameters, args) -> torch.optim.AdamW:
    """AdamW that decays matrices only (not norms or biases), over the parameters that train."""
    trained = [p for p in parameters if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in trained if p.ndim >= 2], "weight_decay": args.weight_decay},
                              {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
                             lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))


def schedule(args, accelerator, optimizer, steps_per_epoch: int | None):
    """(total steps, warm-up-then-cosine scheduler) of a run; `steps_per_epoch` is None for a stream."""
    max_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    # accelerate steps a prepared scheduler once per process per optimizer step, so lengths scale with processes.
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.lr_warmup_steps, max_steps // 2) *
                                                accelerator.num_processes, max_steps * accelerator.num_processes)
    return max_steps, scheduler


def optimizer_step(accelerator, args, model, loss, optimizer, scheduler, step: int) -> None:
    """Backward, clip and step (inside `accelerator.accumulate`), after stopping at the first non-finite loss,
    before it reaches the weights (every process agrees)."""
    if not all_ranks(accelerator, bool(torch.isfinite(loss.detach()))):
        raise TrainingError(diverged_message(args, step, f"the loss is {loss.item()}"))
    accelerator.backward(loss)
    if accelerator.sync_gradients and args.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def moving_average(args, accelerator, model):
    """The EMA copy of `--use_ema` (None without it)."""
    if not args.use_ema:
        return None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError("--use_ema keeps a full copy of the weights and is not supported with FSDP or DeepSpeed "
                         "sharding; use DDP (multi_gpu.yaml) or drop --use_ema.")
    return AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay),
                         use_buffers=True)


def start_trackers(accelerator, args, project: str) -> None:
    if accelerator.is_main_process:
        accelerator.init_trackers(project, config={k: v for k, v in vars(args).items()
                                                   if isinstance(v, (int, float, str, bool)) and k not in SECRET_ARGS})


def resume_state(accelerator, args, resume_path, ema, batches: TrainingBatches) -> int:
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


def final_weights(accelerator, args, model, ema, step):
    """The unwrapped model to save (with the EMA weights when kept) and its full state dict; refuses non-finite
    weights, so a NaN model is never the result."""
    final_model = accelerator.unwrap_model(model)
    if ema is not None:
        final_model.load_state_dict(ema.module.state_dict())
    if not all_ranks(accelerator, weights_are_finite(final_model)):
        raise TrainingError(diverged_message(args, step, "the final weights hold NaN or infinite values"))
    return final_model, accelerator.get_state_dict(model)  # collective: gathers shards under FSDP / DeepSpeed


def push_folder(args, out: Path, message: str) -> None:
    """Upload the final folder without checkpoints, intermediate grids, logs and lists of skipped files."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(args.hub_model_id or out.resolve().name, private=args.hub_private_repo,
                              exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message=message,
                      # the lock names this machine and is still held here
                      ignore_patterns=["checkpoint-*", "samples/*", "logs/*", "skipped_*", LOCK_NAME])
    logger.info(f"Pushed to https://huggingface.co/{repo_id}")


# ----------------------------------------------------------------------------------------------------- evaluation
def task_loss(model, accelerator, batch, k=1, box_probability=0.5, generator=None, reduction="mean", hole_weight=1.0,
              box_sides=(0.0, 1.0)):
    """Cross-entropy through the prepared model, for the model's task: k-ahead prediction for "generate" (k = 1:
    the usual next-token loss), random orders for "inpaint", raster order after the condition for the rest.
    `hole_weight` weighs an inpainting order's rectangle against the pixels before it (in the mean loss);
    `box_sides` bounds the rectangle's sides (fractions of the image side)."""
    config = accelerator.unwrap_model(model).config
    inputs = task_inputs(config, batch["input_ids"], k, box_probability, generator, box_sides=box_sides)
    labels, hole = inputs.pop("labels"), inputs.pop("hole", None)
    logits = model(**inputs, condition_ids=batch.get("condition_ids"), use_cache=False).logits
    weighted = hole is not None and hole_weight != 1 and reduction == "mean"
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                             reduction="none" if weighted else reduction)
    if weighted:
        weights = 1 + (hole_weight - 1) * hole.flatten().float()
        loss = (loss * weights).sum() / weights.sum()
    return loss


@torch.no_grad()
def evaluate(model, dataloader, accelerator, k=1, seed=0):
    """Mean held-out negative log-likelihood in bits per token (= bits/dim for lossless 8-bit modes), for
    k-ahead prediction (k = 1: ordinary one-token-per-pass decoding). Any-order models are scored on random orders
    drawn from `seed`, the same ones at every evaluation."""
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    generator = torch.Generator(accelerator.device).manual_seed(seed + accelerator.process_index)
    for batch in dataloader:
        ids = batch["input_ids"]
        nll = task_loss(model, accelerator, batch, k, generator=generator, reduction="none")
        nll = accelerator.gather_for_metrics(nll.view(ids.shape[0], -1))
        total += nll.sum()
        count += nll.numel()
    model.train()
    return (total / count).item() / math.log(2)


def save_samples(model, processor, args, step, num_classes, accelerator, held_out):
    """A grid of samples; conditional models show (condition, output) pairs for the first held-out images."""
    unwrapped = accelerator.unwrap_model(model)
    sampling = dict(image_processor=processor, generator=torch.Generator().manual_seed(args.seed),
                    batch_size=args.num_samples, show_progress=False)
    if unwrapped.config.is_conditional:
        column = args.source_column if args.task == "translate" else args.image_column
        sources = [open_image(row[column], "image") for row in held_out[: max(1, args.num_samples // 2)]]
        outputs = unwrapped.translate_images(sources, **sampling)
        condition = processor.condition_processor
        shown = condition.decode(condition(sources).input_ids)  # what the model reads, as an image
        shown = [c.resize((args.resolution, args.resolution), Image.Resampling.NEAREST) for c in shown]
        images = [image for pair in zip(shown, outputs) for image in pair]
    else:
        labels = [i % num_classes for i in range(args.num_samples)] if num_classes else None
        images = unwrapped.generate_images(1 if labels else args.num_samples, class_labels=labels, **sampling)
    grid = make_image_grid(images, cols=min(8, len(images)))
    path = Path(args.output_dir, "samples", f"step-{step:06d}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": wandb.Image(grid)}, step=step)
    return grid


# ----------------------------------------------------------------------------------------------------- main
def main(args):
    return launch(args, run_training)


def launch(args, run):
    """Start accelerate, secure `--output_dir` (writable, locked for this run, unfinished checkpoints removed), then
    `run(args, accelerator, started)`: the start of both training scripts."""
    started = time.time()
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=str(Path(args.output_dir, "logs"))),
        # The seedable sampler makes epoch e's order a function of (seed, e): a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("pixelgpt").setLevel(logging.INFO)  # our progress lines, not accelerate's per-file saves
    with ExitStack() as held:

        def secure_output_dir():  # writable, and this run's alone (the main process holds the lock for all)
            check_output_dir(args.output_dir)
            held.enter_context(output_dir_lock(args.output_dir))
            remove_partial_checkpoints(args.output_dir)

        on_main_process(accelerator, secure_output_dir)  # before any data is read
        return run(args, accelerator, started)


def run_training(args, accelerator, started):
    """Everything after the output folder is secured: data, model, (resumed) training, evaluation, saving."""
    set_seed(args.seed)
    tokenizer = load_tokenizer(args) if args.tokenizer else None  # also settles --resolution, a resume setting
    settings = run_settings(args)
    resume_path = find_resume_checkpoint(args, settings)  # refuse a bad resume before spending time on data

    # ---- data and processor
    train, held_out, dataset_name = load_splits(args)
    label_column, num_classes, class_names = None, 0, None
    if args.class_conditional:  # labels are read only when they are used
        label_column, num_classes, class_names = resolve_label_column(args, train)
    condition = {}
    if args.task in CONDITIONAL_TASKS:
        condition = dict(condition_quantization=args.condition_quantization,
                         condition_num_levels=args.condition_num_levels, condition_size=args.condition_size)
    # With a tokenizer, the processor only resizes to 8-bit RGB pixels; the tokenizer makes the tokens.
    processor = PixelGPTImageProcessor(quantization="rgb8" if args.fit_palette or tokenizer else args.quantization,
                                       num_levels=args.num_levels, image_size=args.resolution,
                                       resize_mode=args.resize_mode, resample=args.resample, **condition)
    # Only the held-out images are checked up front (at most --max_eval_samples); training images as they are read.
    held_out = check_images(held_out, args.image_column, processor, args.resolution, "eval", args.skip_bad_images,
                            args.output_dir)
    if args.task == "translate":
        held_out = check_images(held_out, args.source_column, processor.condition_processor, args.condition_size,
                                "eval_source", args.skip_bad_images, args.output_dir)
    if args.fit_palette:
        rows = (itertools.islice(train.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size),
                                 args.palette_samples) if args.streaming else
                train.shuffle(seed=args.seed).select(range(min(args.palette_samples, len(train)))))
        sample = []
        for row in rows:
            try:
                sample.append(read_image(row[args.image_column], "image", processor, args.resolution)[0])
            except ValueError:  # met again, and counted, in training
                pass
        if not sample:
            raise ValueError("None of the images sampled to fit the palette can be read (see --skip_bad_images).")
        processor.fit_palette(sample, args.palette_size, seed=args.seed)
        logger.info(f"Fitted a {processor.vocab_size}-colour palette on {len(sample)} images")
    vocab_size, grid_size, encode_bad = processor.vocab_size, args.resolution, []
    if tokenizer is not None:
        vocab_size, grid_size = tokenizer.config.codebook_size, args.resolution // tokenizer.config.downsample_factor
        if not args.streaming:  # encoded once, not at every pass (a stream is encoded as it is read)
            with accelerator.main_process_first():  # the main process encodes and caches; the others read it
                train, encode_bad = encode_with_tokenizer(train, tokenizer, processor, args, "train")

    overrides = {k: getattr(args, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "intermediate_size") if getattr(args, k) is not None}
    config_kwargs = dict(PIXELGPT_PRESETS[args.model_size], **overrides)
    if args.class_conditional:
        config_kwargs.update(num_classes=num_classes, class_embedding=args.class_embedding)
        if class_names:
            config_kwargs["id2label"] = dict(enumerate(class_names))
    config = PixelGPTConfig(vocab_size=vocab_size, image_size=grid_size,
                            tokens_per_pixel=1 if tokenizer else processor.tokens_per_pixel,
                            parallel_tokens=args.parallel_tokens,
                            task=args.task, condition_size=processor.condition_size,
                            condition_vocab_size=processor.condition_vocab_size,
                            aligned_condition=args.aligned_condition and args.task in CONDITIONAL_TASKS,
                            condition_prefix=args.condition_prefix, inpaint_fill_order=args.inpaint_fill_order,
                            tokenizer_config=tokenizer.config if tokenizer is not None else None, **config_kwargs)
    model = PixelGPTForImageGeneration(config)
    if tokenizer is not None:  # carried frozen: saved with the model, never trained here
        model.image_tokenizer.load_state_dict(tokenizer.state_dict())
    # One checkpoint holds the weights, two Adam moments and the EMA copy, 4 bytes each.
    checkpoint_bytes = 4 * sum(p.numel() for p in model.parameters()) * (3 + bool(args.use_ema))
    on_main_process(accelerator, lambda: check_output_dir(args.output_dir, checkpoint_bytes))
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    collate = make_collate(processor, config, args, label_column, tokenizer)
    batches = TrainingBatches(args, accelerator, train, collate)
    batches.bad_images.update(dict.fromkeys(encode_bad))
    eval_loader = torch.utils.data.DataLoader(held_out, batch_size=args.eval_batch_size, collate_fn=collate,
                                              generator=torch.Generator().manual_seed(args.seed),  # see TrainingBatches
                                              num_workers=args.dataloader_num_workers)

    # ---- optimisation: decay matrices only (not norms or embeddings' biases), warm-up then cosine
    trained = [p for p in model.parameters() if p.requires_grad]  # not a carried tokenizer
    optimizer = adamw(trained, args)
    max_steps, scheduler = schedule(args, accelerator, optimizer, batches.steps_per_epoch)
    model, optimizer, eval_loader, scheduler = accelerator.prepare(model, optimizer, eval_loader, scheduler)
    ema = moving_average(args, accelerator, model)
    bits_name = "bits_per_dim" if processor.bits_per_token_is_bits_per_dim and not tokenizer else "bits_per_token"
    start_trackers(accelerator, args, "pixelgpt")

    # ---- resume
    global_step = resume_state(accelerator, args, resume_path, ema, batches)
    if resume_path is not None and global_step >= max_steps:
        logger.info(f"The run is already at step {global_step} of {max_steps}: nothing left to train.")

    logger.info(f"{'streamed' if args.streaming else len(train)} training / {len(held_out)} held-out images, "
                f"{max_steps} steps, "
                f"{sum(p.numel() for p in trained) / 1e6:.2f}M trained parameters"
                f"{' (and the frozen tokenizer)' if tokenizer is not None else ''}, "
                f"{config.num_image_tokens} tokens per image")
    untrained_bits = evaluate(model, eval_loader, accelerator, seed=args.seed) if global_step == 0 else None
    if untrained_bits is not None:
        logger.info(f"untrained held-out {bits_name}: {untrained_bits:.4f}")
    eval_bits = untrained_bits

    progress = tqdm(total=max_steps, initial=global_step, desc="Training",
                    disable=not accelerator.is_local_main_process)
    tokens_seen, tick = 0, time.time()
    model.train()
    for batch in batches if global_step < max_steps else ():
        with accelerator.accumulate(model):
            # k-ahead steps teach parallel decoding; the draw uses torch's RNG, which checkpoints restore.
            k = 1
            if args.parallel_tokens > 1 and torch.rand(()) < args.parallel_fraction:
                k = args.parallel_tokens
            input_ids = batch["input_ids"]
            if args.class_conditional and args.class_dropout_prob > 0:
                # Condition dropout: some images learn the unconditional start token, for guidance.
                dropped = torch.rand(input_ids.shape[0], device=input_ids.device) < args.class_dropout_prob
                input_ids = input_ids.clone()
                input_ids[dropped, 0] = config.start_token_id
            # Random orders and boxes draw from torch's global RNG, which checkpoints restore.
            box_probability = args.inpaint_box_probability
            if args.inpaint_box_warmup > 0:  # depends on the step only, so a resumed run anneals alike
                box_probability *= min(1.0, global_step / (args.inpaint_box_warmup * max_steps))
            loss = task_loss(model, accelerator, dict(batch, input_ids=input_ids), k, box_probability,
                             hole_weight=args.inpaint_hole_weight, box_sides=tuple(args.inpaint_box_sides))
            optimizer_step(accelerator, args, model, loss, optimizer, scheduler, global_step + 1)
        tokens_seen += batch["input_ids"][:, 1:].numel() * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        bits = loss.item() / math.log(2)
        rate = tokens_seen / max(time.time() - tick, 1e-9)
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", **{bits_name: f"{bits:.3f}"}, tok_s=f"{rate:,.0f}")
        if global_step % args.logging_steps == 0:
            accelerator.log({"train/loss": loss.item(), f"train/{bits_name}": bits, "train/tokens_per_s": rate,
                             "train/lr": scheduler.get_last_lr()[0]}, step=global_step)
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, global_step, ema, settings, batches.state())
        if global_step % args.eval_steps == 0 and global_step < max_steps:
            eval_bits = evaluate(model, eval_loader, accelerator, seed=args.seed)
            accelerator.log({f"eval/{bits_name}": eval_bits}, step=global_step)
            logger.info(f"step {global_step}: held-out {bits_name} {eval_bits:.4f}")
        if global_step % args.sample_steps == 0 and global_step < max_steps and accelerator.is_main_process:
            save_samples(model, processor, args, global_step, config.num_classes, accelerator, held_out)
        if global_step >= max_steps:
            break
    progress.close()
    bad_images = batches.all_bad_images()  # met by any process (skipped, with --skip_bad_images)
    if bad_images and accelerator.is_main_process:
        write_skipped(args.output_dir, "train", bad_images)

    # ---- final: evaluate, save the unwrapped (EMA) model, processor, samples and card
    accelerator.wait_for_everyone()
    final_model, state_dict = final_weights(accelerator, args, model, ema, global_step)
    eval_bits = evaluate(model, eval_loader, accelerator, seed=args.seed)
    accelerator.log({f"eval/{bits_name}": eval_bits}, step=global_step)
    logger.info(f"final held-out {bits_name}: {eval_bits:.4f}")
    parallel_bits = None
    if args.parallel_tokens > 1:
        parallel_bits = evaluate(model, eval_loader, accelerator, k=args.parallel_tokens, seed=args.seed)
        logger.info(f"final held-out {bits_name} of {args.parallel_tokens}-ahead prediction: {parallel_bits:.4f}")
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        final_model.save_pretrained(out, state_dict=state_dict)
        processor.save_pretrained(out)
        grid = save_samples(model, processor, args, global_step, config.num_classes, accelerator, held_out)
        grid.save(out / "samples.png")
        metrics = {bits_name: eval_bits, "untrained_" + bits_name: untrained_bits, "steps": global_step,
                   "train_seconds": round(time.time() - started, 1), "skipped_train_images": len(bad_images)}
        if parallel_bits is not None:
            metrics[f"{bits_name}_{args.parallel_tokens}_ahead"] = parallel_bits
        (out / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(out, args=args, config=config, processor=processor, dataset_name=dataset_name,
                         metrics=metrics, bits_name=bits_name,
                         num_train_images=None if args.streaming else len(train))
        if args.push_to_hub:
            push_folder(args, out, f"PixelGPT, step {global_step}")
    # Release the DDP wrapper (and its gradient reducer) while the process group still exists: freed after
    # end_training() destroys the group, it could hang a CPU/gloo run on its way out.
    del model, optimizer, batches, eval_loader, scheduler
    accelerator.free_memory()
    accelerator.end_training()
    return eval_bits
