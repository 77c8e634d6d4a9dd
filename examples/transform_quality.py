"""How well do trained models transform held-out images, against naive baselines? One sub-command per task.

    python examples/transform_quality.py inpaint --model inpaint-model --raster_model pixelgpt-fashion
    python examples/transform_quality.py upscale --model upscale-model
    python examples/transform_quality.py colorize --model colorize-model --train_data_dir emoji --resolution 16
    python examples/transform_quality.py translate --model sketch2emoji --train_data_dir emoji --source_dir sketches

inpaint: held-out images with a centre square (half the side) or a random rectangle masked. Reported: the masked
pixels' negative log-likelihood (bits/token) under the inpainting model, which reads every other pixel, and under a
raster model, which sees only the rows above, and their paired difference (inpainting minus raster, same images
and masks) with its standard error (--num_scored_images scores more images than are sampled, for a tighter
figure); the masked pixels' mean absolute and squared error (0-255) of inpainted samples, of raster-prefix-only
filling (the raster model completes from the first masked row; the rest is pasted back) and of mean-fill (the mean
of the image's kept pixels), plus the mean of 4 samples (the squared-error-optimal estimate a sampler can give).
upscale / colorize / translate: PSNR (dB) against the original of a sample (and that figure averaged over 4 draws),
of greedy decoding and of the mean of 4 samples, against the naive baselines (bicubic upsampling of the
low-resolution input / the grayscale input itself / the source image itself and the mean training target) and the
ceiling that the model's own quantization allows (the original, quantized; for
a model on a tokenizer's grid, the tokenizer's reconstruction).
Per image, against each baseline: the share of samples (4 draws per image) with a higher PSNR than the baseline's
and the median over images of the difference in dB. A mean of PSNRs is pulled by the few images that a baseline
gets almost exactly (a gray glyph's gray input reaches the 100 dB cap); these two figures are not.
Colorization keeps the input's luminance (`keep_luminance=True`); a sample without it is reported too.
--temperature below 1 (e.g. 0.9) trades variety for pixel error in the samples.

Held-out images: the built-in test split, or --train_data_dir's split made exactly as train.py makes it, or with
--eval_data_dir the images of another folder (unseen images of another style, say). translate pairs each target
with the file of the same relative path under --source_dir, as train.py does.

--update_card writes the report into the model folder (`<task>_quality.json`, the examples as
`<task>_quality_grid.png`) and adds its figures to the folder's model card (README.md, as train.py wrote it): a
"Task quality" section and the YAML model-index. Measuring again replaces them.

    python examples/transform_quality.py upscale --model upscale-model --update_card
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from datasets import Image as ImageFeature
from huggingface_hub import EvalResult
from PIL import Image
from transformers import AutoModel

from pixelgpt import training  # held-out split exactly as in training
from pixelgpt.cards import DEFAULT_DATASET_HUB_ID, save_card_grid, update_model_card
from pixelgpt.quality import quantized
from pixelgpt.utils import IMAGE_EXTENSIONS, image_files, make_image_grid, open_image, psnr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["inpaint", "upscale", "colorize", "translate"], help="What to measure.")
    p.add_argument("--model", required=True, help="Model folder trained for the task.")
    p.add_argument("--raster_model", help="inpaint: a raster (--task generate) model of the same data, the baseline.")
    p.add_argument("--train_data_dir", help="Image folder the model was trained on (default: the built-in data).")
    p.add_argument("--source_dir", help="translate: the source images, paired with the targets by relative path "
                   "(as given to train.py; with --eval_data_dir, the sources of its images).")
    p.add_argument("--eval_data_dir", help="Measure on the images of this folder instead of held-out training images "
                   "(the first --num_images, in file order): images of another style than the training data, say.")
    p.add_argument("--resolution", type=int, default=None, help="As given to train.py (default: the model's).")
    p.add_argument("--num_images", type=int, default=200, help="Held-out images to measure on.")
    p.add_argument("--num_scored_images", type=int, default=None,
                   help="inpaint: held-out images whose masked bits/token are measured (default: --num_images; "
                   "sampling uses the first --num_images). Scoring is cheap, and more images narrow the paired "
                   "difference's standard error.")
    p.add_argument("--batch_size", type=int, default=64, help="Images sampled together.")
    p.add_argument("--seed", type=int, default=0, help="Seed of masks and samples.")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="Sampling temperature of the samples (greedy rows use 0); below 1 trades variety for "
                   "pixel error.")
    p.add_argument("--output", help="Write the report as JSON here.")
    p.add_argument("--grid", help="Write a PNG grid of examples here.")
    p.add_argument("--update_card", action="store_true",
                   help="Also write the report and the examples grid into the model folder and add the figures to "
                   "its model card (README.md): a section and the YAML model-index; measuring again replaces them.")
    return p


def held_out_images(args, model, count: int | None = None) -> list[Image.Image]:
    count = count or args.num_images
    if args.eval_data_dir:  # every image of the folder is unseen: the first `count`, in file order
        return [open_image(path, str(path.name)) for path in eval_files(args)[:count]]
    _, held_out, _ = training.load_splits(training.DataArguments(train_data_dir=args.train_data_dir,
                                                                 max_eval_samples=count))
    return [open_image(row["image"], f"held-out {i}") for i, row in enumerate(held_out)]


def eval_files(args) -> list[Path]:
    """The image files of --eval_data_dir, in file order."""
    files = image_files(args.eval_data_dir)
    if not files:
        raise ValueError(f"--eval_data_dir {args.eval_data_dir}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                         " in it")
    return files


def pixels(images) -> np.ndarray:
    """PIL images -> (B, H, W, C) float arrays in 0..255."""
    return np.stack([np.asarray(i, dtype=np.float64).reshape(i.height, i.width, -1) for i in images])


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR in dB."""
    return float(psnr(a, b).mean())


def sampling(args, seed_offset: int = 0, **extra) -> dict:
    options = dict(generator=torch.Generator().manual_seed(args.seed + seed_offset), batch_size=args.batch_size,
                   show_progress=False, temperature=args.temperature)
    return {**options, **extra}


def masks_for(size: int, count: int, kind: str, seed: int) -> np.ndarray:
    """(count, size, size) bool: a centre square of half the side, or random rectangles of 1/4 to 3/4 the side."""
    masks = np.zeros((count, size, size), dtype=bool)
    rng = np.random.default_rng(seed)
    for m in masks:
        if kind == "centre":
            a, b = size // 4, size // 4 + size // 2
            m[a:b, a:b] = True
        else:
            h, w = rng.integers(size // 4, 3 * size // 4 + 1, 2)
            top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            m[top : top + h, left : left + w] = True
    return masks


def measure_inpaint(args, model):
    raster = AutoModel.from_pretrained(args.raster_model, trust_remote_code=True).eval()
    processor = model.image_processor
    scored_images = held_out_images(args, model, max(args.num_images, args.num_scored_images or 0))
    images = scored_images[: args.num_images]
    size = model.config.pixel_size  # image side in pixels (a tokenizer model's grid is smaller)
    truth = pixels(quantized(processor, images))  # quantized originals (B, H, W, C)
    report = {"num_scored_images": len(scored_images)} if args.num_scored_images else {}
    examples = []
    for kind in ("centre", "random"):
        scored_masks = masks_for(size, len(scored_images), kind, args.seed)
        masks = scored_masks[: len(images)]
        ours = model.score_images(scored_images, scored_masks, generator=torch.Generator().manual_seed(args.seed))
        base = raster.score_images(scored_images, scored_masks)
        difference = (ours - base).double()  # paired: the same images and masks under both models
        entry = {"masked_bits_per_token": {
            "inpainting_model_all_sides": float(ours.mean()),
            "raster_model_prefix_only": float(base.mean()),
            "difference": float(difference.mean()),
            "difference_standard_error": float(difference.std() / math.sqrt(len(difference)))
            if len(difference) > 1 else None,
        }}
        samples = np.stack([pixels(model.inpaint_images(images, masks, **sampling(args)))])
        extra = model.inpaint_images(images, masks, num_samples=3, **sampling(args, seed_offset=1))
        extra = pixels(extra).reshape(len(images), 3, *truth.shape[1:]).swapaxes(0, 1)
        mean_of_4 = np.concatenate([samples, extra]).mean(0)
        raster_fill = np.empty_like(truth)
        first_rows = masks.any(2).argmax(1)  # first masked row of each image
        for keep in np.unique(first_rows):
            chosen = np.flatnonzero(first_rows == keep)
            done = raster.complete_images([images[i] for i in chosen], int(keep), **sampling(args))
            raster_fill[chosen] = pixels(done)
        hole = masks[..., None]  # (B, H, W, 1): broadcast over channels
        raster_fill = np.where(hole, raster_fill, truth)
        mean_fill = np.where(hole, np.stack([t[~m].mean(0) for t, m in zip(truth, masks)])[:, None, None], truth)
        errors = {}
        for name, filled in (("inpainting_model_sample", samples[0]), ("inpainting_model_mean_of_4", mean_of_4),
                             ("raster_prefix_only_sample", raster_fill), ("mean_fill", mean_fill)):
            diff = (filled - truth)[masks]  # (masked pixels, C)
            errors[name] = {"mae": float(np.abs(diff).mean()), "mse": float((diff**2).mean())}
        entry["masked_pixel_error"] = errors
        report[kind] = entry
        if kind == "centre":
            masked = np.where(hole, 128, truth)
            for row in (truth, masked, raster_fill, samples[0]):
                examples += [Image.fromarray(r.astype(np.uint8).squeeze(-1) if r.shape[-1] == 1 else
                                             r.astype(np.uint8)) for r in row[:8]]
    return report, examples, min(8, len(images))


def held_out_pairs(args) -> tuple[list[Image.Image], list[Image.Image]]:
    """translate: (sources, targets) of --num_images held-out pairs. Targets are --eval_data_dir's images (the
    first, in file order) or the held-out split of --train_data_dir; a target's source is the file of the same
    relative path under --source_dir, as train.py pairs them."""
    if not args.source_dir:
        raise ValueError("translate needs --source_dir: the folder of source images paired by relative path with the "
                         "targets (as given to train.py).")
    if args.eval_data_dir:
        root, sources, pairs = Path(args.eval_data_dir), Path(args.source_dir), []
        for path in eval_files(args)[: args.num_images]:
            source = training.data.source_file(sources, path.relative_to(root))
            if source is None:
                raise ValueError(f"{path} has no source image of the same relative path under {sources}.")
            pairs.append((open_image(source, str(source)), open_image(path, str(path))))
        return [s for s, _ in pairs], [t for _, t in pairs]
    _, held_out, _ = training.load_splits(training.DataArguments(
        train_data_dir=args.train_data_dir, source_dir=args.source_dir, source_column="source",
        max_eval_samples=args.num_images))
    return ([open_image(row["source"], f"source {i}") for i, row in enumerate(held_out)],
            [open_image(row["image"], f"held-out {i}") for i, row in enumerate(held_out)])


def training_mean(args, target) -> np.ndarray:
    """translate: the per-pixel mean of the training targets at the model's resolution, `(H, W, C)`: what a model
    that ignored its source would do best on average."""
    train, _, _ = training.load_splits(training.DataArguments(train_data_dir=args.train_data_dir))
    column = train.cast_column("image", ImageFeature(decode=False))["image"]
    total = 0.0
    for start in range(0, len(column), 256):
        chunk = [open_image(v, f"training image {start + i}") for i, v in enumerate(column[start:start + 256])]
        total = total + target.to_array(chunk).astype(np.float64).sum(0)
    return total / len(column)


def baselines(args, model, images, truth, sources=None) -> tuple[list, dict, object]:
    """(the model's inputs, {name: baseline images like `truth`}, the model's method) for upscale, colorize and
    translate (whose inputs are `sources`, the held-out targets' sources)."""
    processor = model.image_processor
    if args.task == "upscale":
        low = processor.condition_processor.to_array(images)  # the model's input, at condition_size
        inputs = [Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x) for x in low]
        mode = "L" if truth.shape[-1] == 1 else "RGB"
        bicubic = np.stack([np.asarray(i.convert(mode).resize(truth.shape[1:3][::-1], Image.Resampling.BICUBIC),
                                       dtype=np.float64).reshape(truth.shape[1:]) for i in inputs])
        return inputs, {"bicubic_upsampling": bicubic}, model.upscale_images
    if args.task == "colorize":
        gray = np.stack([np.asarray(Image.fromarray(t.astype(np.uint8)).convert("L"), dtype=np.float64) for t in truth])
        inputs = [Image.fromarray(g.astype(np.uint8)) for g in gray]
        return inputs, {"grayscale_input": np.repeat(gray[..., None], truth.shape[-1], axis=-1)}, model.colorize_images
    target = truth_processor(processor)
    mean = np.broadcast_to(training_mean(args, target), truth.shape)
    return sources, {"source_input": target.to_array(sources).astype(np.float64), "mean_training_target": mean}, \
        model.translate_images


def truth_processor(processor):
    """A lossless processor (8-bit gray or RGB) at the model's resolution and resizing: the originals as compared."""
    return type(processor)(quantization="gray8" if processor.num_channels == 1 else "rgb8",
                           image_size=processor.image_size, resize_mode=processor.resize_mode,
                           resample=processor.resample, background=processor.background)


def measure_conditional(args, model):
    processor = model.image_processor
    sources, images = held_out_pairs(args) if args.task == "translate" else (None, held_out_images(args, model))
    truth = truth_processor(processor).to_array(images).astype(np.float64)  # (B, H, W, C) originals
    ceiling, ceiling_name = pixels(quantized(processor, images)), "quantized_original_ceiling"
    if model.image_tokenizer is not None:  # what the model's tokens can express at best: the tokenizer's round trip
        ceiling = pixels(model.decode_tokens(model.encode_images(images, processor), processor))
        ceiling_name = "tokenizer_reconstruction_ceiling"
    inputs, naive, method = baselines(args, model, images, truth, sources)
    sample = pixels(method(inputs, **sampling(args)))
    greedy = pixels(method(inputs, **sampling(args, temperature=0.0)))
    more = pixels(method(inputs, num_samples=3, **sampling(args, seed_offset=1)))
    more = more.reshape(len(images), 3, *sample.shape[1:])
    mean_of_4 = (sample + more.sum(1)) / 4
    # One sample's PSNR is noisy; the same figure averaged over the 4 draws is the steadier single-sample estimate.
    single = np.mean([mean_psnr(sample, truth)] + [mean_psnr(more[:, i], truth) for i in range(3)])
    report = {"psnr_db": {"model_sample": mean_psnr(sample, truth), "model_sample_mean_over_4_draws": float(single),
                          "model_greedy": mean_psnr(greedy, truth),
                          "model_mean_of_4_samples": mean_psnr(mean_of_4, truth),
                          **{name: mean_psnr(value, truth) for name, value in naive.items()},
                          ceiling_name: mean_psnr(ceiling, truth)}}
    draws = np.stack([psnr(sample, truth)] + [psnr(more[:, i], truth) for i in range(3)])  # (4, B) per image
    for name, value in naive.items():  # a mean of PSNRs follows the few images a baseline gets almost exactly
        difference = draws - psnr(value, truth)  # (4, B)
        report[f"per_image_against_{name}"] = {"share_of_samples_better": float((difference > 0).mean()),
                                               "median_difference_db": float(np.median(difference.mean(0)))}
    if args.task == "colorize":  # the samples above keep the input's luminance; this one uses the model's colours only
        own = pixels(method(inputs, keep_luminance=False, **sampling(args)))
        report["psnr_db"]["model_sample_without_keep_luminance"] = mean_psnr(own, truth)
    shown = [np.asarray(i.resize(truth.shape[1:3][::-1], Image.Resampling.NEAREST)) for i in inputs[:8]]
    rows = [shown, next(iter(naive.values()))[:8], sample[:8], greedy[:8], truth[:8]]
    examples = [Image.fromarray(np.asarray(r).astype(np.uint8).squeeze()).convert("RGB") for row in rows for r in row]
    return report, examples, min(8, len(images))


# What the card says about each task's figures and grid rows.
CARD_NOTES = {
    "inpaint": "Masked bits/token: negative log-likelihood of the masked pixels (lower is better) under this model, "
               "which reads every other pixel, and under a raster model of the same data, which sees only the rows "
               "above. Masked-pixel error on the 0-255 scale (lower is better): of a sample, of the mean of 4 "
               "samples, of raster-prefix-only filling and of mean-fill. `centre`: a centre square of half the side; "
               "`random`: random rectangles.",
    "upscale": "PSNR in dB against the original (higher is better): of a sample, of that averaged over 4 draws, of "
               "greedy decoding and of the mean of 4 samples, against bicubic upsampling of the same input and the "
               "ceiling that the model's quantization allows.",
    "colorize": "PSNR in dB against the original (higher is better): of a sample (keeping the input's luminance), "
                "of that averaged over 4 draws, of greedy decoding and of the mean of 4 samples, against the "
                "grayscale input itself and the ceiling that the model's quantization allows.",
    "translate": "PSNR in dB against the target (higher is better): of a sample, of that averaged over 4 draws, of "
                 "greedy decoding and of the mean of 4 samples, against the source image itself, the per-pixel mean "
                 "of the training targets and the ceiling that the model's quantization allows.",
}
GRID_ROWS = {"inpaint": "Rows: original, masked, raster-prefix-only fill, inpainting model.",
             "upscale": "Rows: input (enlarged), bicubic, sample, greedy, original.",
             "colorize": "Rows: grayscale input, grayscale input, sample, greedy, original.",
             "translate": "Rows: source, source, sample, greedy, target."}


def report_figures(report: dict, path: tuple = ()) -> list:
    """(key path, value) of every number measured in `report`; its settings (task, num_images, temperature) are
    at the top level and left out."""
    found = []
    for key, value in report.items():
        if isinstance(value, dict):
            found += report_figures(value, (*path, key))
        elif path and isinstance(value, (int, float)):
            found.append(((*path, key), float(value)))
    return found


def update_card(args, report: dict, examples: list, cols: int) -> None:
    """--update_card: `<task>_quality.json` and the examples grid in the model folder, and every figure in the
    card's text and YAML model-index (no local path: the data is named as built-in or as a local folder)."""
    folder, name = Path(args.model), f"{args.task}_quality"
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2))
    make_image_grid(examples, cols=cols).save(folder / f"{name}_grid.png")
    grid = save_card_grid(folder, f"{name}_grid.png")
    hub_dataset = None if args.train_data_dir else DEFAULT_DATASET_HUB_ID
    rows, results = [], []
    for path, value in report_figures(report):
        label = ": ".join(part.replace("_", " ") for part in path)
        rows.append(f"| {label} | {value:.4f} |")
        results.append(EvalResult(task_type="image-to-image", task_name=args.task,
                                  dataset_type=hub_dataset or "imagefolder",
                                  dataset_name=hub_dataset or "local image folder",
                                  metric_type=f"{name}_" + "_".join(path), metric_name=f"{args.task}: {label}",
                                  metric_value=round(value, 4)))
    data = "the built-in Fashion-MNIST test images" if hub_dataset else "images held out of its local training folder"
    scored = f"; masked bits/token on {report['num_scored_images']}" if "num_scored_images" in report else ""
    body = (f"Measured by `examples/transform_quality.py {args.task}` on {report['num_images']} {data}{scored} "
            f"(sampling temperature {report['temperature']}); the whole report is `{name}.json`. "
            f"{CARD_NOTES[args.task]}\n\n"
            "| figure | value |\n|---|---|\n" + "\n".join(rows) + "\n")
    if grid:
        body += f"\n![{args.task} examples]({grid[0]})\n\n{GRID_ROWS[args.task]} {grid[1]}\n"
    update_model_card(folder, key=name, title=f"Task quality: {args.task}", body=body, eval_results=results)


def main(args):
    if args.num_scored_images is not None and args.num_scored_images < 1:
        raise ValueError(f"--num_scored_images must be >= 1 (held-out images to score), got {args.num_scored_images}.")
    if args.update_card and not (Path(args.model) / "README.md").is_file():
        raise ValueError(f"--update_card needs a local model folder with its model card (README.md, as train.py "
                         f"writes it); {args.model} has none.")
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    if model.config.task != args.task:
        raise ValueError(f"{args.model} was trained for task {model.config.task!r}, not {args.task!r}.")
    if args.task == "inpaint" and not args.raster_model:
        raise ValueError("inpaint needs --raster_model (a --task generate model of the same data) as the baseline.")
    model.get_image_processor()  # loads the processor saved beside the model
    measure = measure_inpaint if args.task == "inpaint" else measure_conditional
    report, examples, cols = measure(args, model)
    report = {"task": args.task, "num_images": args.num_images, "temperature": args.temperature, **report}
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    if args.grid:
        grid = make_image_grid(examples, cols=cols)
        grid.resize((grid.width * 3, grid.height * 3), Image.Resampling.NEAREST).save(args.grid)
    if args.update_card:
        update_card(args, report, examples, cols)
    return report


if __name__ == "__main__":
    main(build_parser().parse_args())
