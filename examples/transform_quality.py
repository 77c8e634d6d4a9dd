"""How well do trained models transform held-out images, against naive baselines? One sub-command per task.

    python examples/transform_quality.py inpaint --model inpaint-model --raster_model pixelgpt-fashion
    python examples/transform_quality.py upscale --model upscale-model
    python examples/transform_quality.py colorize --model colorize-model --train_data_dir emoji --resolution 16

inpaint: held-out images with a centre square (half the side) or a random rectangle masked. Reported: the masked
pixels' negative log-likelihood (bits/token) under the inpainting model, which reads every other pixel, and under a
raster model, which sees only the rows above, and their paired difference (inpainting minus raster, same images
and masks) with its standard error (--num_scored_images scores more images than are sampled, for a tighter
figure); the masked pixels' mean absolute and squared error (0-255) of inpainted samples, of raster-prefix-only
filling (the raster model completes from the first masked row; the rest is pasted back) and of mean-fill (the mean
of the image's kept pixels), plus the mean of 4 samples (the squared-error-optimal estimate a sampler can give).
upscale / colorize: PSNR (dB) against the original of a sample (and that figure averaged over 4 draws), of greedy
decoding and of the mean of 4 samples, against the naive baseline (bicubic upsampling of the low-resolution input /
the grayscale input itself) and the ceiling that the model's own quantization allows (the original, quantized; for
a model on a tokenizer's grid, the tokenizer's reconstruction).
Colorization keeps the input's luminance (`keep_luminance=True`); a sample without it is reported too.
--temperature below 1 (e.g. 0.9) trades variety for pixel error in the samples.

Held-out images: the built-in test split, or --train_data_dir's split made exactly as train.py makes it, or with
--eval_data_dir the images of another folder (unseen images of another style, say).

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
from huggingface_hub import EvalResult
from PIL import Image
from transformers import AutoModel

from pixelgpt import training  # held-out split exactly as in training
from pixelgpt.cards import DEFAULT_DATASET_HUB_ID, save_card_grid, update_model_card
from pixelgpt.quality import quantized
from pixelgpt.utils import IMAGE_EXTENSIONS, image_files, make_image_grid, open_image, psnr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["inpaint", "upscale", "colorize"], help="What to measure.")
    p.add_argument("--model", required=True, help="Model folder trained for the task.")
    p.add_argument("--raster_model", help="inpaint: a raster (--task generate) model of the same data, the baseline.")
    p.add_argument("--train_data_dir", help="Image folder the model was trained on (default: the built-in data).")
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
        files = image_files(args.eval_data_dir)
        if not files:
            raise ValueError(f"--eval_data_dir {args.eval_data_dir}: no image files "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")
        return [open_image(path, str(path.name)) for path in files[:count]]
    _, held_out, _ = training.load_splits(training.DataArguments(train_data_dir=args.train_data_dir,
                                                                 max_eval_samples=count))
    return [open_image(row["image"], f"held-out {i}") for i, row in enumerate(held_out)]


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


def measure_conditional(args, model):
    processor = model.image_processor
    images = held_out_images(args, model)
    target = type(processor)(quantization="gray8" if processor.num_channels == 1 else "rgb8",
                             image_size=processor.image_size, resize_mode=processor.resize_mode,
                             resample=processor.resample, background=processor.background)
    truth = target.to_array(images).astype(np.float64)  # (B, H, W, C) originals at the model's resolution
    ceiling, ceiling_name = pixels(quantized(processor, images)), "quantized_original_ceiling"
    if model.image_tokenizer is not None:  # what the model's tokens can express at best: the tokenizer's round trip
        ceiling = pixels(model.decode_tokens(model.encode_images(images, processor), processor))
        ceiling_name = "tokenizer_reconstruction_ceiling"
    if args.task == "upscale":
        low = processor.condition_processor.to_array(images)  # the model's input, at condition_size
        inputs = [Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x) for x in low]
        mode = "L" if truth.shape[-1] == 1 else "RGB"
        baseline = np.stack([np.asarray(i.convert(mode).resize(truth.shape[1:3][::-1], Image.Resampling.BICUBIC),
                                        dtype=np.float64).reshape(truth.shape[1:]) for i in inputs])
        baseline_name = "bicubic_upsampling"
        method = model.upscale_images
    else:
        gray = np.stack([np.asarray(Image.fromarray(t.astype(np.uint8)).convert("L"), dtype=np.float64) for t in truth])
        baseline = np.repeat(gray[..., None], truth.shape[-1], axis=-1)
        inputs = [Image.fromarray(g.astype(np.uint8)) for g in gray]
        baseline_name = "grayscale_input"
        method = model.colorize_images
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
                          baseline_name: mean_psnr(baseline, truth), ceiling_name: mean_psnr(ceiling, truth)}}
    if args.task == "colorize":  # the samples above keep the input's luminance; this one uses the model's colours only
        own = pixels(method(inputs, keep_luminance=False, **sampling(args)))
        report["psnr_db"]["model_sample_without_keep_luminance"] = mean_psnr(own, truth)
    shown = [np.asarray(i.resize(truth.shape[1:3][::-1], Image.Resampling.NEAREST)) for i in inputs[:8]]
    rows = [shown, baseline[:8], sample[:8], greedy[:8], truth[:8]]
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
}
GRID_ROWS = {"inpaint": "Rows: original, masked, raster-prefix-only fill, inpainting model.",
             "upscale": "Rows: input (enlarged), bicubic, sample, greedy, original.",
             "colorize": "Rows: grayscale input, grayscale input, sample, greedy, original."}


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
