"""Training data: the splits (a folder, a `datasets` name or the built-in set; prepared or streamed), paired
sources, labels, reading and checking images, encoding them once with an image tokenizer, and the collate function
that turns undecoded rows into batches. Images are decoded as batches are made, never all before training."""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from datasets import ClassLabel, DatasetDict, IterableDataset, IterableDatasetDict, Value, load_dataset
from datasets import Image as ImageFeature
from PIL import Image

from ..default_data import DEFAULT_DATASET_NAME, EMOJI_DATASET_NAME, load_default_dataset, load_emoji_dataset
from ..modeling.configuration_pixelgpt import MAX_CLASSES
from ..modeling.modeling_pixelgpt_vqvae import PixelGPTVQVAE
from ..utils import IMAGE_EXTENSIONS, image_key, open_image
from .arguments import DataArguments, tokenizer_config
from .text import caption_ids

logger = get_logger(__name__)


def load_splits(data: DataArguments, seed: int = 0):
    """Returns (train, held-out rows, dataset name for the card). `train` is a `Dataset`, or with --streaming an
    `IterableDataset` that nothing has read yet; the held-out images (at most --max_eval_samples) are a list of rows
    (`seed` draws the held-out share when the data has no eval split). Image columns stay undecoded (bytes/path):
    training images are decoded as batches are made (`make_collate`)."""
    stream = dict(streaming=True) if data.streaming else {}
    if data.train_data_dir:
        root = Path(data.train_data_dir)
        if not root.is_dir():
            raise ValueError(f"--train_data_dir {root} is not a folder.")
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in root.rglob("*") if f.is_file()):
            raise ValueError(f"--train_data_dir {root} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        dataset, name = load_dataset("imagefolder", data_dir=str(root), cache_dir=data.cache_dir, **stream), None
        if data.source_dir:  # pair before splitting, so that every missing source is reported at once
            dataset = pair_with_sources(dataset, data)
    elif data.dataset_name:
        dataset = load_dataset(data.dataset_name, data.dataset_config_name, cache_dir=data.cache_dir, **stream)
        # A Hub id names the data on the card; a local path would put this machine's folders into a public card.
        name = None if Path(data.dataset_name).expanduser().exists() else data.dataset_name
    elif data.builtin_data == "emoji":
        dataset, name = load_emoji_dataset(data.streaming), EMOJI_DATASET_NAME
    else:
        dataset, name = load_default_dataset(data.streaming), DEFAULT_DATASET_NAME
    if not isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        dataset = DatasetDict({data.split: dataset})
    if data.split not in dataset:
        raise ValueError(f"Split {data.split!r} not found; the data has splits {sorted(dataset)}.")
    eval_split = data.eval_split or next((s for s in ("test", "validation") if s in dataset and s != data.split), None)
    if data.eval_split and data.eval_split not in dataset:
        raise ValueError(f"--eval_split {data.eval_split!r} not found; the data has splits {sorted(dataset)}.")
    train = dataset[data.split]
    if not data.streaming and len(train) == 0:
        raise ValueError(f"Split {data.split!r} has no rows.")
    if eval_split:
        held_out = dataset[eval_split]
    elif data.streaming:  # a stream cannot be split at random: its first images are held out, the rest trained on
        held_out = train.take(data.max_eval_samples)
    else:
        parts = train.train_test_split(test_size=data.eval_fraction, seed=seed)
        train, held_out = parts["train"], parts["test"]
    columns = [data.image_column] + ([data.source_column] if data.source_column else [])
    for split in (train, held_out):
        # A stream may not know its columns before its first row; reading one row is cheap.
        names = split.column_names or list(next(iter(split), {}))
        if data.image_column not in names:
            raise ValueError(f"Image column {data.image_column!r} not found; columns are {names}.")
        for column in columns[1:]:
            if column not in names:
                raise ValueError(f"Source column {column!r} not found; columns are {names}.")
    if data.max_train_samples:
        train = train.take(data.max_train_samples) if data.streaming else train.select(
            range(min(data.max_train_samples, len(train))))
    held_out = held_out.take(data.max_eval_samples) if data.streaming else held_out.select(
        range(min(data.max_eval_samples, len(held_out))))
    for column in columns:
        if isinstance((train.features or {}).get(column), ImageFeature):  # decode ourselves, naming bad files
            train = train.cast_column(column, ImageFeature(decode=False))
            held_out = held_out.cast_column(column, ImageFeature(decode=False))
    held_out = list(held_out)
    if not held_out:
        raise ValueError("There are no held-out images to evaluate on (the eval split is empty).")
    if data.streaming and not eval_split:
        # Leave the held-out images out by content, not with `skip()`: a skip is divided among the files when
        # processes or DataLoader workers split the stream, and it stops the files' order from being shuffled.
        held = {image_key(row[data.image_column]) for row in held_out}
        train = train.filter(lambda value: image_key(value) not in held, input_columns=data.image_column)
    return train, held_out, name



def pair_with_sources(dataset: DatasetDict, data: DataArguments) -> DatasetDict:
    """Add the source column: for each target image, the file of the same relative path (any image extension)
    under --source_dir."""
    root, sources = Path(data.train_data_dir).resolve(), Path(data.source_dir)
    if not sources.is_dir():
        raise ValueError(f"--source_dir {sources} is not a folder.")
    paired, missing, total = {}, [], 0
    for split, rows in dataset.items():
        paired[split] = []
        for value in rows.cast_column(data.image_column, ImageFeature(decode=False))[data.image_column]:
            relative = Path(value["path"]).resolve().relative_to(root)
            match = source_file(sources, relative)
            if match is None:
                missing.append(str(relative))
            paired[split].append(str(match) if match else None)
            total += 1
    if missing:
        raise ValueError(f"{len(missing)} of {total} target images have no source image of the same name under "
                         f"--source_dir {sources}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return DatasetDict({split: rows.add_column(data.source_column, paired[split]) for split, rows in dataset.items()})


def source_file(sources: Path, relative: Path) -> Path | None:
    """The source image of the target at `relative`: the file of that relative path under `sources`, in any image
    format (same name), or None."""
    match = sources / relative
    if match.is_file():
        return match
    candidates = sorted(match.parent.glob(match.stem + ".*"))
    return candidates[0] if candidates else None


def resolve_label_column(label_column: str | None, dataset):
    """(column, number of classes, class names or None) of the labels a class-conditional model learns."""
    column = label_column or ("label" if "label" in dataset.column_names else None)
    if column is None:
        raise ValueError(f"--class_conditional needs a label column; columns are {dataset.column_names}.")
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


def load_tokenizer(name: str) -> PixelGPTVQVAE:
    """The `--tokenizer` model (a folder or Hub id), in eval mode; refused with one line when its weights cannot be
    read or hold NaN or infinite values (it would encode every image to garbage codes)."""
    tokenizer_config(name)  # a clear error for a folder that holds something else
    try:
        tokenizer = PixelGPTVQVAE.from_pretrained(name).eval()
    except Exception as err:  # OSError, safetensors' SafetensorError, torch's RuntimeError for a damaged file
        raise ValueError(f"--tokenizer {name}: its weights cannot be read ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}). Train it again with "
                         "examples/train_tokenizer.py, or give another folder.") from None
    if not all(bool(torch.isfinite(p).all()) for p in tokenizer.parameters()):
        raise ValueError(f"--tokenizer {name} holds NaN or infinite weights (its training diverged): it cannot "
                         "encode images. Train it again (a lower --learning_rate) and give that folder.")
    # The saved model's config carries the tokenizer's: a Hub id may name it there, a local path would put this
    # machine's folders into a file that may be pushed.
    tokenizer.config.name_or_path = "" if Path(name).expanduser().exists() else name
    return tokenizer


def tokenizer_digest(tokenizer) -> str:
    """sha256 of the tokenizer's weights: what identifies it (a folder retrained in place is another tokenizer;
    `./tok` and `tok` are the same one)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def encode_with_tokenizer(dataset, tokenizer, processor, data: DataArguments, task: str, split_name,
                          batch_size: int = 64):
    """Add a `token_ids` column: every image encoded once by the tokenizer, not at every step (and, for the
    conditional tasks, `condition_ids`: the processor's tokens of each row's condition image, see `read_row`).
    `datasets` caches the result beside a file-backed dataset under a fingerprint of the data, the tokenizer's
    weights, the processor and the task, so a second run on the same data reads it back. Returns (dataset, bad
    images): unusable images are left out with --skip_bad_images, else stop the run."""
    conditional = processor.condition_quantization is not None
    digest = hashlib.sha256(dataset._fingerprint.encode() + tokenizer_digest(tokenizer).encode())
    digest.update(json.dumps([processor.to_dict(), task, data.source_column], sort_keys=True,
                             default=str).encode())
    blank = (np.zeros((processor.image_size, processor.image_size, 3), np.uint8), Image.new("RGB", (1, 1)))

    def encode(batch):
        pixels, sources, problems = [], [], []
        for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
            try:
                array, source = read_row(row, processor, data.image_column, data.source_column)
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
    if problems and not data.skip_bad_images:
        raise ValueError(f"Bad {split_name} image: {problems[0]}" + (f" (and {len(problems) - 1} more)" if
                         len(problems) > 1 else "") + ". Fix or remove it, or pass --skip_bad_images to skip such "
                         "images (counted and listed).")
    if problems:
        dataset = dataset.filter(lambda problem: not problem, input_columns="problem")
    return dataset.remove_columns("problem"), problems


def read_row(row: dict, processor, image_column: str, source_column: str | None) -> tuple[np.ndarray, Image.Image]:
    """One training row: its image's processed `(H, W, C)` uint8 pixels and the condition image the conditional
    tasks read (the image itself for colorize and upscale, the source image for translate). A ValueError names
    an unusable file."""
    image, array = read_image(row[image_column], "image", processor, processor.image_size)
    if source_column:  # --task translate
        condition = processor.condition_processor
        image = read_image(row[source_column], "source", condition, condition.image_size)[0]
    return array, image


def make_collate(processor, config, data: DataArguments, label_column, tokenizer=None, text_processor=None):
    """The DataLoader's `collate_fn`: undecoded rows -> a batch (`input_ids`, `condition_ids` for the conditional
    tasks, `text_ids` (the captions of --caption_column) with a `text_processor`, and `bad_images`). Images are
    decoded here, in DataLoader workers when there are some, never all before training; a row whose image cannot be
    used is left out of the batch and named in `bad_images`. Rows encoded ahead by a tokenizer (`token_ids`) are used
    as they are; `tokenizer` encodes the others (a stream)."""
    def collate(rows):
        pixels, sources, tokens, conditions, labels, captions, bad = [], [], [], [], [], [], []
        for row in rows:
            if "token_ids" in row:  # encoded once by the image tokenizer (`encode_with_tokenizer`)
                tokens.append(np.asarray(row["token_ids"]))
                conditions.append(row.get("condition_ids"))
            else:
                try:
                    array, source = read_row(row, processor, data.image_column, data.source_column)
                except ValueError as err:
                    bad.append(str(err))
                    continue
                pixels.append(array)
                sources.append(source)
            if label_column:
                labels.append(config.class_token_id(row[label_column]))
            if text_processor is not None:
                captions.append(row[data.caption_column])
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
        if text_processor is not None:
            batch["text_ids"] = torch.tensor(caption_ids(text_processor, captions), dtype=torch.long).view(
                len(captions), config.max_text_length)
        if config.is_conditional:
            ids = processor.encode_condition(sources, return_tensors="np").condition_ids if sources else conditions
            batch["condition_ids"] = torch.as_tensor(np.array(ids), dtype=torch.long).view(
                len(start), config.num_condition_tokens)
        return batch

    return collate


