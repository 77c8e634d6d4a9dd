"""The training flags as typed dataclasses, as transformers' `TrainingArguments`: each part of a run (data, run,
image processor, model; tokenizer for stage one) is one frozen dataclass whose fields are the flags, with their
defaults and help in one place. `parse_args` / `parse_tokenizer_args` read the command line into them; values that
follow from others (the palette quantization, a default resolution, the condition settings) are settled once, in
`resolve()`, and never changed afterwards. Library code takes the part it reads: `load_splits(args.data, seed)`.

Each dataclass can also be built in Python and checked with `check()` (a `ValueError` naming the accepted range).
"""

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from ..loading import tokenizer_config
from ..modeling import PIXELGPT_PRESETS
from ..modeling.configuration_pixelgpt import CONDITIONAL_TASKS, FILL_ORDERS, PIXELGPT_TASKS
from ..modeling.configuration_pixelgpt_vqvae import DOWNSAMPLE_FACTORS, PixelGPTVQVAEConfig
from ..processing.image_processing_pixelgpt import CONDITION_QUANTIZATIONS, QUANTIZATIONS, RESAMPLE, RESIZE_MODES
from ..utils import first_image_side

DESCRIPTION = """Train a PixelGPT on an image dataset (the flags of `examples/train.py` and `pixelgpt train`).

    accelerate launch examples/train.py --class_conditional --output_dir pixelgpt-fashion  # built-in data, 2 stages
    accelerate launch examples/train.py --train_data_dir ./my_images --tokenizer none --quantization rgb  # pixels
    pixelgpt train --dataset_name user/dataset --image_column img --label_column cls --class_conditional
    pixelgpt train --task inpaint                      # any-order model: inpaint, outpaint, vary
    pixelgpt train --train_data_dir photos --source_dir sketches --task translate   # paired folders
    pixelgpt train --text_conditional --output_dir pixelgpt-emoji   # prompts: built-in captioned emoji, 2 stages

Plain `python examples/train.py` (or `pixelgpt train`) runs one process; `accelerate launch` adds multi-process /
mixed precision.
"""

TOKENIZER_DESCRIPTION = """Train the image tokenizer, stage one of two (the flags of `examples/train_tokenizer.py` and
`pixelgpt train-tokenizer`). Data, checkpoints, locking and resume work as for `train.py`.

    accelerate launch examples/train_tokenizer.py --train_data_dir emoji --output_dir emoji-tokenizer
    python examples/train.py --tokenizer emoji-tokenizer --train_data_dir emoji --class_conditional   # stage two

The tokenizer learns to reconstruct images through its token grid (L1 + MSE, and with `--disc_weight` > 0 a
patch discriminator's hinge loss for sharpness). It reports held-out PSNR against the same-budget baseline (each
image shrunk to the token grid's size in RGB and enlarged again with bicubic) and the share of codes in use.
"""


def flag(default=None, help="", group=None, **argparse_kwargs):
    """A dataclass field that is also a command-line flag `--<name>`: `help`, the argparse group it is listed
    under, and any argparse keyword that its type does not imply (choices, metavar)."""
    extra = dict(help=help, group=group, **argparse_kwargs)
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=extra)
    return field(default=default, metadata=extra)


def add_arguments(parser: argparse.ArgumentParser, cls, groups: dict, skip: tuple = ()) -> None:
    """Add one flag per field of the dataclass `cls`: booleans that default to False are switches, those that
    default to True also get `--no-<name>`, lists take one or more values and tuples a fixed number."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs = dict(f.metadata)
        title = kwargs.pop("group")
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = f.type
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None`: the flag's type is int
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif typing.get_origin(kind) in (list, tuple):
            items = typing.get_args(kind)
            kwargs.update(type=items[0], nargs="+" if typing.get_origin(kind) is list else len(items))
        else:
            kwargs["type"] = kind
        groups[title].add_argument(f"--{f.name}", default=default, **kwargs)


def from_namespace(cls, namespace: argparse.Namespace):
    """The dataclass `cls` with the values of `namespace` (fields it lacks keep their defaults); argparse's lists
    become tuples where the field is one, so parsed and constructed arguments compare equal."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    for f in dataclasses.fields(cls):
        if typing.get_origin(f.type) is tuple and isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def at_least_one(part, names) -> None:
    for name in names:
        value = getattr(part, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")


def in_unit_range(part, names, low_open: bool = False, high_open: bool = True) -> None:
    """Each of `names` in [0, 1) by default; NaN fails every comparison, so the test is for what is accepted."""
    for name in names:
        value = getattr(part, name)
        above = value > 0 if low_open else value >= 0
        below = value < 1 if high_open else value <= 1
        if not (above and below):
            interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
            raise ValueError(f"--{name} must be in {interval}, got {value}")


DATA = "data (default: the built-in Fashion-MNIST subset; with --text_conditional the built-in captioned emoji)"
BUILTIN_DATA = ("fashion", "emoji")


@dataclass(frozen=True)
class DataArguments:
    """Which images to train and evaluate on, and how they are read."""

    train_data_dir: str | None = flag(None, "Folder of images (datasets 'imagefolder'); sub-folders become class "
                                      "labels.", DATA)
    dataset_name: str | None = flag(None, "A datasets Hub name or local dataset path.", DATA)
    dataset_config_name: str | None = flag(None, "Configuration name of --dataset_name.", DATA)
    cache_dir: str | None = flag(None, "Where datasets caches downloads.", DATA)
    image_column: str = flag("image", "Column holding the images.", DATA)
    split: str = flag("train", "Split to train on.", DATA)
    eval_split: str | None = flag(None, "Held-out split (default: 'test' or 'validation' if present, else "
                                  "--eval_fraction of train).", DATA)
    eval_fraction: float = flag(0.05, "Share of train held out when no eval split exists.", DATA)
    max_train_samples: int | None = flag(None, "Use only this many training images.", DATA)
    max_eval_samples: int = flag(500, "Evaluate on at most this many held-out images.", DATA)
    skip_bad_images: bool = flag(False, "Skip unreadable/too-small images (counted, and listed in "
                                 "skipped_*_images.txt at the end) instead of stopping at the first one.", DATA)
    streaming: bool = flag(False, "Stream the data (a datasets IterableDataset) instead of preparing it: training "
                           "starts at once whatever the size, the order is shuffled through --shuffle_buffer_size "
                           "images, each process reads its own part. Needs --max_train_steps.", DATA)
    shuffle_buffer_size: int = flag(1000, "--streaming: images held in the shuffle buffer (more: better mixing, more "
                                    "memory).", DATA)
    label_column: str | None = flag(None, "Column of integer or ClassLabel labels (default: 'label', if any).", DATA)
    source_column: str | None = flag(None, "--task translate: the column of source images (the image column holds "
                                     "the targets).", DATA)
    source_dir: str | None = flag(None, "--task translate with --train_data_dir: a folder of source images with the "
                                  "same relative file names as the target images.", DATA)
    caption_column: str = flag("text", "--text_conditional: the captions' column (a folder: its metadata.jsonl).", DATA)
    builtin_data: str | None = flag(None, "Data without --train_data_dir or --dataset_name: fashion (Fashion-MNIST, "
                                    "28x28 gray) or emoji (captioned Twemoji, 64x64; --text_conditional's default).",
                                    DATA, choices=BUILTIN_DATA)

    @property
    def is_default(self) -> bool:
        """True for the built-in data (no folder or dataset given)."""
        return not (self.train_data_dir or self.dataset_name)

    def default_resolution(self, largest: int, multiple: int = 4) -> int:
        """28 for the built-in Fashion-MNIST, 64 for the built-in emoji; else `largest`, or a folder's first image's
        smaller side when that is smaller (rounded down to a multiple of `multiple`): enlarging small images by
        default would refuse them all."""
        if self.is_default:
            return 64 if self.builtin_data == "emoji" else 28
        side = first_image_side(self.train_data_dir) if self.train_data_dir else None  # a dataset is not read here
        return min(largest, max(8, side // multiple * multiple) if side else largest)

    def with_builtin(self, text: bool) -> "DataArguments":  # --builtin_data settled: emoji for text models
        return dataclasses.replace(self, builtin_data=self.builtin_data or ("emoji" if text else "fashion"))

    def check(self) -> None:
        if self.train_data_dir and self.dataset_name:
            raise ValueError("give --train_data_dir or --dataset_name, not both")
        at_least_one(self, ("max_eval_samples", "max_train_samples", "shuffle_buffer_size"))
        in_unit_range(self, ("eval_fraction",), low_open=True)
        if self.source_dir and not self.train_data_dir:
            raise ValueError("--source_dir pairs with --train_data_dir (the folder of target images)")
        if self.source_dir and self.source_column and self.source_column != "source":
            raise ValueError("give --source_column or --source_dir, not both")
        if self.source_dir and self.streaming:
            raise ValueError("--source_dir pairs files by listing both folders, which --streaming does not do; put "
                             "the sources in a dataset column (--source_column) to stream them")


TRAIN, EVAL, CHECKPOINTS, HUB = "training", "evaluation, samples, logging", "checkpoints", "Hub"


@dataclass(frozen=True)
class RunArguments:
    """Optimisation, cadence of logs, evaluations, samples and checkpoints, and the Hub: what both trainers share."""

    output_dir: str = flag("pixelgpt-output", "Where model, card, samples and checkpoints go.", TRAIN)
    seed: int = flag(0, "Seed for initialisation, data order and sampling.", TRAIN)
    train_batch_size: int = flag(32, "Images per device per step.", TRAIN)
    eval_batch_size: int = flag(64, "Images per device per evaluation step.", TRAIN)
    num_epochs: int | None = flag(None, "Passes over the training set (default: a budget from the data's size and "
                                  "resolution, docs/training.md#step-budgets).", TRAIN)
    max_train_steps: int | None = flag(None, "Stop after this many optimizer steps (overrides epochs).", TRAIN)
    gradient_accumulation_steps: int = flag(1, "Micro-batches per optimizer step.", TRAIN)
    learning_rate: float = flag(2e-3, "Peak learning rate.", TRAIN)
    lr_warmup_steps: int = flag(100, "Linear warm-up steps before cosine decay.", TRAIN)
    adam_beta1: float = flag(0.9, "AdamW beta1.", TRAIN)
    adam_beta2: float = flag(0.95, "AdamW beta2.", TRAIN)
    weight_decay: float = flag(0.01, "AdamW weight decay (matrices only).", TRAIN)
    max_grad_norm: float = flag(1.0, "Gradient clipping norm (0 disables).", TRAIN)
    use_ema: bool = flag(False, "Keep an exponential moving average of the weights.", TRAIN)
    ema_decay: float = flag(0.999, "EMA decay per optimizer step.", TRAIN)
    mixed_precision: str | None = flag(None, "Mixed precision (default: accelerate's config).", TRAIN,
                                       choices=["no", "fp16", "bf16"])
    dataloader_num_workers: int = flag(0, "DataLoader worker processes.", TRAIN)

    eval_steps: int = flag(500, "Evaluate on the held-out images every N steps (and at the end).", EVAL)
    sample_steps: int = flag(1000, "Save an image grid every N steps (and at the end).", EVAL)
    num_samples: int = flag(16, "Images in each grid.", EVAL)
    report_to: str = flag("none", "accelerate trackers: tensorboard, wandb, all or none.", EVAL)
    logging_steps: int = flag(10, "Log training metrics every N steps.", EVAL)

    checkpointing_steps: int = flag(500, "Save a resumable checkpoint every N steps.", CHECKPOINTS)
    checkpoints_total_limit: int = flag(2, "Keep at most this many checkpoints (0 keeps every one). Older ones are "
                                        "deleted only after a new one is complete.", CHECKPOINTS)
    resume_from_checkpoint: str | None = flag(None, "'latest' (fails if there is none) or a checkpoint-<step> folder "
                                              "to resume from; the model and data settings must match the "
                                              "checkpoint's.", CHECKPOINTS)

    push_to_hub: bool = flag(False, "Upload the final model folder to the Hub.", HUB)
    hub_model_id: str | None = flag(None, "Repository id (default: the output folder's name).", HUB)
    hub_token: str | None = flag(None, "Hub token (default: the saved login).", HUB)
    hub_private_repo: bool = flag(False, "Create the repository as private.", HUB)

    def check(self, streaming: bool = False) -> None:
        at_least_one(self, ("train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps",
                            "eval_steps", "sample_steps", "checkpointing_steps", "logging_steps", "num_samples",
                            "max_train_steps"))
        if self.checkpoints_total_limit < 0:
            raise ValueError(f"--checkpoints_total_limit must be >= 1, or 0 to keep every checkpoint; got "
                             f"{self.checkpoints_total_limit}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be a finite number > 0, got {self.learning_rate}")
        for name in ("weight_decay", "max_grad_norm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"--{name} must be a finite number >= 0 (0 turns it off), got {getattr(self, name)}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"--lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        in_unit_range(self, ("ema_decay", "adam_beta1", "adam_beta2"))
        if streaming and self.max_train_steps is None:
            raise ValueError("--streaming needs --max_train_steps (a stream has no known length, so epochs cannot "
                             "set it)")


PROCESSOR = "image processor"
# --tokenizer's words (anything else is a trained tokenizer's folder or Hub id).
AUTO, TRAIN_TOKENIZER, NO_TOKENIZER = "auto", "train", "none"


@dataclass(frozen=True)
class ImageArguments:
    """How images become the tokens the model reads: the image processor's settings, or a learned tokenizer."""

    resolution: int | None = flag(None, "Side of the square training images (default: 28 for the built-in data; else "
                                  "32, or a folder's images' own side when smaller).", PROCESSOR)
    quantization: str | None = flag(None, "Token scheme of a pixel model: N-level gray/rgb, lossless 8-bit "
                                    "gray8/rgb8, or a k-means palette (default: gray; giving it chooses pixels "
                                    "over --tokenizer auto).", PROCESSOR, choices=QUANTIZATIONS)
    num_levels: int = flag(8, "Levels per channel for gray/rgb quantization.", PROCESSOR)
    fit_palette: bool = flag(False, "Learn a k-means palette from training images (implies --quantization "
                             "palette).", PROCESSOR)
    palette_size: int = flag(256, "Colours in the learned palette.", PROCESSOR)
    palette_samples: int = flag(1000, "Training images sampled to fit the palette.", PROCESSOR)
    resize_mode: str = flag("crop", "Resize policy.", PROCESSOR, choices=RESIZE_MODES)
    resample: str = flag("bicubic", "Resampling filter used when resizing.", PROCESSOR, choices=sorted(RESAMPLE))
    tokenizer: str = flag(AUTO, "What the model reads. 'train': two stages in this run, an image tokenizer trained on "
                          "the same images (into <output_dir>/tokenizer; the 'tokenizer' flags below), then the model "
                          "on its token grid. 'none': pixels (lossless with gray8/rgb8). A folder or Hub id: a "
                          "tokenizer trained before. 'auto' (default): 'train' when the grid would be at least 4x4 "
                          "(--resolution >= 16, a multiple of 4) and neither --quantization, --fit_palette nor "
                          "--streaming asks for pixels, else 'none'. The saved model carries its tokenizer; condition "
                          "images stay pixels.", PROCESSOR)
    tokenizer_steps: int | None = flag(None, "With --tokenizer train: steps of stage one (default: a budget, "
                                       "docs/training.md#step-budgets; needed with --streaming).", PROCESSOR)

    def check(self) -> None:
        at_least_one(self, ("tokenizer_steps",))
        if self.quantization == "palette" and not self.fit_palette:
            raise ValueError("--quantization palette needs --fit_palette (the palette is learned from the training "
                             "images)")
        if self.tokenizer not in (AUTO, NO_TOKENIZER) and self.fit_palette:
            raise ValueError("--fit_palette does not combine with --tokenizer (the tokenizer makes the tokens)")


MODEL = "model"


@dataclass(frozen=True)
class ModelArguments:
    """The network (size preset and overrides), its task and the task's training options."""

    task: str = flag("generate", "generate: raster-order model; inpaint: random-order model (inpainting, outpainting, "
                     "variations); colorize / upscale: learn images from their own grayscale / low-resolution version; "
                     "translate: learn targets from paired source images.", MODEL, choices=PIXELGPT_TASKS)
    inpaint_box_probability: float = flag(1.0, "--task inpaint: share of training orders that leave a random "
                                          "rectangle for last; the rest are wholly random orders (raster orders with "
                                          "--inpaint_fill_order raster_both).", MODEL)
    inpaint_box_sides: tuple[float, float] = flag(
        (0.0, 1.0), "--task inpaint: the training rectangles' height and width are uniform between these fractions of "
        "the image side (at least 1 pixel; default 0 1: any size). 0.25 0.75 spends the training on object-sized "
        "holes, the masks transform_quality.py measures (docs/tasks.md).", MODEL, metavar=("LOW", "HIGH"))
    inpaint_box_warmup: float = flag(0.0, "--task inpaint: share of the training steps over which the share of orders "
                                     "with a rectangle rises linearly from 0 to --inpaint_box_probability, as RAR "
                                     "anneals its orders (with --inpaint_fill_order raster_both, the orders without "
                                     "one are the raster order); 0 = none.", MODEL)
    inpaint_hole_weight: float = flag(1.0, "--task inpaint: weight of the rectangle's pixels in the training loss "
                                      "against the pixels read before them (1 = all alike); above 1 spends more of "
                                      "the training on filling holes.", MODEL)
    inpaint_fill_order: str = flag("raster", "--task inpaint: order of the pixels left for last (rectangles in "
                                   "training, holes when inpainting): raster (row by row; better likelihood at the "
                                   "same budget) or random; raster_both also reads the known pixels row by row "
                                   "(slightly better likelihood, worse samples: docs/tasks.md).", MODEL,
                                   choices=FILL_ORDERS)
    aligned_condition: bool = flag(True, "Conditional tasks: add the condition pixel under each predicted pixel to "
                                   "its row (--no-aligned_condition: attention alone finds it).", MODEL)
    condition_prefix: bool = flag(True, "Conditional tasks: also put the condition tokens before the image, for "
                                  "attention to read.", MODEL)
    condition_quantization: str | None = flag(None, "How condition images are tokenized (default: gray8 for "
                                              "colorize, for gray quantizations on pixels and for the built-in "
                                              "grayscale data on tokens; rgb otherwise).", MODEL,
                                              choices=CONDITION_QUANTIZATIONS)
    condition_num_levels: int = flag(8, "Levels per channel of gray/rgb conditions.", MODEL)
    condition_size: int | None = flag(None, "Side of the condition image (default: upscale the token grid's side on "
                                      "tokens, resolution/4 on pixels; else the resolution). On tokens, a multiple "
                                      "of the grid's side is read a cell per token.", MODEL)
    model_size: str = flag("tiny", "Size preset.", MODEL, choices=sorted(PIXELGPT_PRESETS))
    hidden_size: int | None = flag(None, "Override the preset's width.", MODEL)
    num_hidden_layers: int | None = flag(None, "Override the preset's depth.", MODEL)
    num_attention_heads: int | None = flag(None, "Override the preset's head count.", MODEL)
    intermediate_size: int | None = flag(None, "Override the MLP width.", MODEL)
    class_conditional: bool = flag(False, "Condition on the label column (class tokens).", MODEL)
    class_embedding: bool = flag(True, "With --class_conditional: add a class embedding to every row "
                                 "(--no-class_embedding: the class is only the start token).", MODEL)
    class_dropout_prob: float = flag(0.1, "With --class_conditional: share of images trained with the unconditional "
                                     "start token, which classifier-free guidance (generate_images(guidance_scale="
                                     "...)) needs.", MODEL)
    text_conditional: bool = flag(False, "Condition on the captions of --caption_column (text prompts).", MODEL)
    prompt_dropout_prob: float = flag(0.1, "--text_conditional: share trained with the empty prompt (guidance).", MODEL)
    text_vocab_size: int = flag(1000, "With --text_conditional: most entries of the prompt tokenizer.", MODEL)
    caption_word_dropout: float = flag(0.25, "--text_conditional: chance that a caption token is left out.", MODEL)
    gradient_checkpointing: bool = flag(False, "Trade compute for activation memory.", MODEL)
    parallel_tokens: int = flag(1, "Also train k-ahead prediction for this k, so the model can draw k tokens per "
                                "forward pass (generate_images(tokens_per_step=k)); 1 = one token per pass only.",
                                MODEL)
    parallel_fraction: float = flag(0.5, "Share of training steps that use k-ahead prediction when --parallel_tokens "
                                    "> 1.", MODEL)
    quality_samples: int = flag(200, "--class_conditional: at the end, judge this many samples per --quality_guidance "
                                "by a classifier of the run's images (pixelgpt.quality); --text_conditional on the "
                                "built-in emoji: 1/25 of it per prompt (pixelgpt.prompt_quality, at PROMPT_GUIDANCE). "
                                "Figures go on the card; 0 skips it.", EVAL)
    quality_guidance: list[float] = flag([3.0, 1.0, 2.0, 4.0, 5.0], "The guidance scales --quality_samples measures; "
                                         "the first is the headline figure and the copy check's.", EVAL)

    @property
    def is_conditional(self) -> bool:
        """A task that reads a condition image (colorize, upscale, translate)."""
        return self.task in CONDITIONAL_TASKS

    def sizes(self) -> dict:
        """The network's sizes as they resolve: the preset with the overrides given (a preset's width given
        explicitly, or the derived MLP width, is the same model)."""
        overrides = {k: getattr(self, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "intermediate_size") if getattr(self, k) is not None}
        return dict(PIXELGPT_PRESETS[self.model_size], **overrides)

    def check(self) -> None:
        if not 1 <= self.parallel_tokens <= 64:
            raise ValueError("--parallel_tokens must be in [1, 64]")
        in_unit_range(self, ("parallel_fraction",), low_open=True, high_open=False)
        if self.quality_samples < 0:
            raise ValueError(f"--quality_samples must be >= 0 (0 skips the measurement), got {self.quality_samples}")
        if not all(math.isfinite(g) and g >= 0 for g in self.quality_guidance):
            raise ValueError(f"--quality_guidance scales must be finite and >= 0 (1 = no guidance), got "
                             f"{list(self.quality_guidance)}")
        in_unit_range(self, ("class_dropout_prob", "prompt_dropout_prob", "caption_word_dropout",
                             "inpaint_box_probability", "inpaint_box_warmup"), high_open=False)
        if self.text_conditional and self.class_conditional:
            raise ValueError("--text_conditional does not combine with --class_conditional (captions can name it)")
        if not 10 <= self.text_vocab_size <= 100_000:
            raise ValueError(f"--text_vocab_size must be in [10, 100000], got {self.text_vocab_size}")
        if self.parallel_tokens > 1 and self.task != "generate":
            raise ValueError("--parallel_tokens needs --task generate (k-ahead decoding is raster order)")
        low, high = self.inpaint_box_sides
        if not 0 <= low <= high <= 1 or high == 0:
            raise ValueError(f"--inpaint_box_sides must be two fractions of the image side with 0 <= LOW <= HIGH <= 1 "
                             f"and HIGH > 0, got {low} {high}")
        if not 0 < self.inpaint_hole_weight <= 100:
            raise ValueError("--inpaint_hole_weight must be in (0, 100]")
        if self.is_conditional:
            if self.class_conditional:
                raise ValueError(f"--class_conditional does not combine with --task {self.task}")
            if self.condition_size is not None and not 1 <= self.condition_size <= 256:
                raise ValueError("--condition_size must be in [1, 256]")
            if not (self.aligned_condition or self.condition_prefix):
                raise ValueError("--no-aligned_condition with --no-condition_prefix leaves the model no way to read "
                                 "its condition")


TOKENIZER = "tokenizer"


@dataclass(frozen=True)
class TokenizerArguments:
    """The image tokenizer of stage one: its images, its autoencoder and its optional adversarial loss."""

    resolution: int | None = flag(None, "Side of the square training images, a multiple of --downsample_factor "
                                  "(default: 64, or a folder's images' own side when smaller; 28 for the built-in "
                                  "data).", "images")
    resize_mode: str = flag("crop", "Resize policy.", "images", choices=RESIZE_MODES)
    resample: str = flag("bicubic", "Resampling filter used when resizing.", "images", choices=sorted(RESAMPLE))
    downsample_factor: int = flag(4, "Pixels per token along each side (64x64 images: 16x16 tokens with 4, 8x8 with "
                                  "8).", TOKENIZER, choices=DOWNSAMPLE_FACTORS)
    base_channels: int = flag(32, "Width of the full-resolution stage (doubles per halving, up to 4x); 64-128 on a "
                              "GPU.", TOKENIZER)
    num_res_blocks: int = flag(1, "Residual blocks per resolution stage.", TOKENIZER)
    fsq_levels: list[int] = flag([8, 5, 5, 5], "Levels per latent channel of finite scalar quantization; codebook "
                                 "size is their product (8 5 5 5: 1,000 codes; 8 8 8 5 5 5: 64,000).", TOKENIZER)
    disc_weight: float = flag(0.0, "Weight of a patch discriminator's adversarial (hinge) loss, for sharper "
                              "reconstructions; 0 (default) trains on L1 + MSE only.", TOKENIZER)
    disc_start: int = flag(0, "With --disc_weight: optimizer step from which the adversarial loss is used.", TOKENIZER)

    def config(self) -> PixelGPTVQVAEConfig:
        """The tokenizer's config (its constructor checks the sizes)."""
        return PixelGPTVQVAEConfig(image_size=self.resolution, downsample_factor=self.downsample_factor,
                                   base_channels=self.base_channels, num_res_blocks=self.num_res_blocks,
                                   fsq_levels=self.fsq_levels)

    def check(self) -> None:
        if self.resolution % self.downsample_factor or not 8 <= self.resolution <= 1024:
            raise ValueError(f"--resolution must be in [8, 1024] and a multiple of --downsample_factor "
                             f"({self.downsample_factor}), got {self.resolution}")
        if not (math.isfinite(self.disc_weight) and self.disc_weight >= 0):
            raise ValueError(f"--disc_weight must be a finite number >= 0, got {self.disc_weight}")
        if self.disc_start < 0:
            raise ValueError(f"--disc_start must be >= 0, got {self.disc_start}")
        self.config()


class Arguments:
    """What both trainers' argument sets do alike: flatten to one name -> value dict (for resume settings,
    trackers and cards), and check every part."""

    def flat(self) -> dict:
        """Every field of every part by name; a name two parts share (the images' resolution) is the first one's."""
        values = {}
        for part in dataclasses.fields(self):
            for name, value in dataclasses.asdict(getattr(self, part.name)).items():
                values.setdefault(name, value)
        return values


@dataclass(frozen=True)
class TrainingArguments(Arguments):
    """Every setting of a PixelGPT training run, in parts."""

    data: DataArguments = field(default_factory=DataArguments)
    run: RunArguments = field(default_factory=RunArguments)
    image: ImageArguments = field(default_factory=ImageArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    tokenizer: TokenizerArguments = field(default_factory=TokenizerArguments)  # stage one of --tokenizer train

    @property
    def trains_tokenizer(self) -> bool:
        return self.image.tokenizer == TRAIN_TOKENIZER

    def resolve_image(self, image: ImageArguments) -> ImageArguments:
        """Settle --tokenizer (auto: two stages when the token grid is at least 4x4 and nothing asks for pixels),
        the default --resolution and --quantization, and the palette's quantization."""
        data, model = self.data, self.model
        if image.fit_palette:
            image = dataclasses.replace(image, quantization="palette")
        tokenizer = image.tokenizer
        trained_before = tokenizer not in (AUTO, TRAIN_TOKENIZER, NO_TOKENIZER)
        resolution = image.resolution
        if resolution is None:
            if trained_before and model.is_conditional:
                raise ValueError(f"--task {model.task} with --tokenizer needs --resolution (the images' side in "
                                 "pixels), from which --condition_size defaults")
            resolution = tokenizer_config(tokenizer).image_size if trained_before else data.default_resolution(32)
        if tokenizer == AUTO:
            big_enough = resolution >= 16 and resolution % 4 == 0  # a token grid of at least 4x4 (factor 4)
            pixels_asked = image.quantization is not None or data.streaming
            tokenizer = TRAIN_TOKENIZER if big_enough and not pixels_asked else NO_TOKENIZER
        return dataclasses.replace(image, resolution=resolution, quantization=image.quantization or "gray",
                                   tokenizer=None if tokenizer == NO_TOKENIZER else tokenizer)

    def resolve(self) -> "TrainingArguments":
        """Check every part, then settle the values that follow from others; returns the resolved arguments."""
        self = dataclasses.replace(self, data=self.data.with_builtin(self.model.text_conditional))
        data, image, model = self.data, self.image, self.model
        data.check()
        self.run.check(data.streaming)
        image.check()
        model.check()
        if model.task == "translate" and not (data.source_column or data.source_dir):
            raise ValueError("--task translate needs paired source images: --source_column (a dataset column) or "
                             "--source_dir (a folder mirroring --train_data_dir)")
        if model.task != "translate" and (data.source_column or data.source_dir):
            raise ValueError("--source_column / --source_dir are for --task translate")
        if data.source_dir:
            data = dataclasses.replace(data, source_column="source")  # the column pairing with --source_dir adds
        image = self.resolve_image(image)
        # Stage one of --tokenizer train reads the images as stage two does (its image flags are the processor's).
        tokenizer = dataclasses.replace(self.tokenizer, resolution=image.resolution, resize_mode=image.resize_mode,
                                        resample=image.resample)
        factor = None  # pixels per token along a side
        if image.tokenizer == TRAIN_TOKENIZER:
            tokenizer.check()
            factor = tokenizer.downsample_factor
            if data.streaming and image.tokenizer_steps is None:
                raise ValueError("--tokenizer train with --streaming needs --tokenizer_steps (a stream has no known "
                                 "length, so passes cannot set stage one's steps)")
        elif image.tokenizer_steps is not None:
            raise ValueError("--tokenizer_steps is for --tokenizer train")
        elif image.tokenizer is not None:
            factor = tokenizer_config(image.tokenizer).downsample_factor
            if image.resolution % factor:
                raise ValueError(f"--resolution {image.resolution} must be a multiple of the tokenizer's "
                                 f"downsampling factor ({factor}).")
        if model.is_conditional:
            quantization = model.condition_quantization
            if quantization is None:
                # With a tokenizer the images are read as colour (--quantization is unused): RGB conditions unless
                # colorizing, or the data is the built-in grayscale Fashion-MNIST (8-bit gray beats 8-level RGB).
                gray = model.task == "colorize" or (data.is_default if factor else image.quantization in ("gray",
                                                                                                         "gray8"))
                quantization = "gray8" if gray else "rgb"
            # Upscale reads one low-resolution pixel per token (28 -> 7x7 with factor 4); colorize and translate
            # the full resolution, on tokens each token the cell of pixels under it (`build_config`).
            low = image.resolution // factor if factor else max(1, image.resolution // 4)
            size = model.condition_size or (low if model.task == "upscale" else image.resolution)
            model = dataclasses.replace(model, condition_quantization=quantization, condition_size=size)
            model.check()
        return dataclasses.replace(self, data=data, image=image, model=model, tokenizer=tokenizer)


@dataclass(frozen=True)
class TokenizerTrainingArguments(Arguments):
    """Every setting of an image tokenizer's training run, in parts."""

    data: DataArguments = field(default_factory=DataArguments)
    run: RunArguments = field(default_factory=RunArguments)
    tokenizer: TokenizerArguments = field(default_factory=TokenizerArguments)

    def resolve(self) -> "TokenizerTrainingArguments":
        self = dataclasses.replace(self, data=self.data.with_builtin(text=False))
        self.data.check()
        self.run.check(self.data.streaming)
        tokenizer = self.tokenizer
        if tokenizer.resolution is None:  # 64 unless the images are smaller (the built-in ones are 28x28)
            tokenizer = dataclasses.replace(tokenizer, resolution=self.data.default_resolution(
                64, tokenizer.downsample_factor))
        tokenizer.check()
        return dataclasses.replace(self, tokenizer=tokenizer)


# With --tokenizer train, stage one reads the images with the image processor's flags.
SHARED_IMAGE_FLAGS = ("resolution", "resize_mode", "resample")
# The pair-reading flags mean nothing to a tokenizer, which reads single images.
TOKENIZER_SKIPPED_DATA = ("label_column", "source_column", "source_dir", "caption_column")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {TOKENIZER: p.add_argument_group("tokenizer: stage one of --tokenizer train")}
    for cls in (DataArguments, ImageArguments, ModelArguments, RunArguments):
        add_arguments(p, cls, groups)
    add_arguments(p, TokenizerArguments, groups, skip=SHARED_IMAGE_FLAGS)
    return p


def build_tokenizer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=TOKENIZER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {}
    add_arguments(p, DataArguments, groups, skip=TOKENIZER_SKIPPED_DATA)
    for cls in (TokenizerArguments, RunArguments):
        add_arguments(p, cls, groups)
    return p


def _parse(parser: argparse.ArgumentParser, cls, argv):
    namespace = parser.parse_args(argv)
    parts = {f.name: from_namespace(f.type, namespace) for f in dataclasses.fields(cls)}
    try:
        return cls(**parts).resolve()
    except ValueError as err:  # a flag value that cannot work: argparse's usage line and the reason
        parser.error(str(err))


def parse_args(argv=None) -> TrainingArguments:
    """The command line of `examples/train.py` / `pixelgpt train` as resolved `TrainingArguments`."""
    return _parse(build_parser(), TrainingArguments, argv)


def parse_tokenizer_args(argv=None) -> TokenizerTrainingArguments:
    """The command line of `examples/train_tokenizer.py` / `pixelgpt train-tokenizer`."""
    return _parse(build_tokenizer_parser(), TokenizerTrainingArguments, argv)


__all__ = ["DataArguments", "ImageArguments", "ModelArguments", "RunArguments", "TokenizerArguments",
           "TokenizerTrainingArguments", "TrainingArguments", "build_parser", "build_tokenizer_parser", "parse_args",
           "parse_tokenizer_args"]
