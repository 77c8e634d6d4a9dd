"""Training the image tokenizer (stage one of two): the flags, loop, evaluation and card behind
`examples/train_tokenizer.py` and `pixelgpt train-tokenizer`. Data, checkpoints, locking and resume work as in
`pixelgpt.training` (the same flags; `--help` lists them).

    accelerate launch examples/train_tokenizer.py --train_data_dir emoji --output_dir emoji-tokenizer
    python examples/train.py --tokenizer emoji-tokenizer --train_data_dir emoji --class_conditional   # stage two

The tokenizer learns to reconstruct images through its token grid (L1 + MSE, and with `--disc_weight` > 0 a
patch discriminator's hinge loss for sharpness). It reports held-out PSNR against the same-budget baseline (each
image shrunk to the token grid's size in RGB and enlarged again with bicubic) and the share of codes in use.
"""

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .modeling.configuration_pixelgpt_vqvae import DOWNSAMPLE_FACTORS, PixelGPTVQVAEConfig
from .modeling.modeling_pixelgpt_vqvae import PixelGPTVQVAE
from .processing import PixelGPTImageProcessor
from .processing.image_processing_pixelgpt import RESAMPLE, RESIZE_MODES
from .training import (
    TrainingBatches,
    adamw,
    add_data_arguments,
    add_run_arguments,
    check_images,
    check_output_dir,
    check_run_arguments,
    data_settings,
    final_weights,
    find_resume_checkpoint,
    launch,
    load_splits,
    moving_average,
    on_main_process,
    optimizer_step,
    push_folder,
    read_image,
    resume_state,
    save_checkpoint,
    schedule,
    start_trackers,
    write_skipped,
)
from .utils import DEFAULT_DATASET_HUB_ID, local_data, make_image_grid, save_card_grid

logger = get_logger(__name__)

# What a tokenizer checkpoint is only meaningful with (a resume with another value is refused, naming it).
RESUME_SETTINGS = ("resolution", "resize_mode", "downsample_factor", "base_channels", "num_res_blocks", "fsq_levels",
                   "use_ema", "disc_weight")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    proc = p.add_argument_group("images")
    proc.add_argument("--resolution", type=int, default=None,
                      help="Side of the square training images, a multiple of --downsample_factor (default: 64, or "
                      "28 for the built-in 28x28 data).")
    proc.add_argument("--resize_mode", default="crop", choices=RESIZE_MODES, help="Resize policy.")
    proc.add_argument("--resample", default="bicubic", choices=sorted(RESAMPLE),
                      help="Resampling filter used when resizing.")
    model = p.add_argument_group("tokenizer")
    model.add_argument("--downsample_factor", type=int, default=4, choices=DOWNSAMPLE_FACTORS,
                       help="Pixels per token along each side (64x64 images: 16x16 tokens with 4, 8x8 with 8).")
    model.add_argument("--base_channels", type=int, default=32,
                       help="Width of the full-resolution stage (doubles per halving, up to 4x); 64-128 on a GPU.")
    model.add_argument("--num_res_blocks", type=int, default=1, help="Residual blocks per resolution stage.")
    model.add_argument("--fsq_levels", type=int, nargs="+", default=[8, 5, 5, 5],
                       help="Levels per latent channel of finite scalar quantization; codebook size is their product "
                       "(8 5 5 5: 1,000 codes; 8 8 8 5 5 5: 64,000).")
    model.add_argument("--disc_weight", type=float, default=0.0,
                       help="Weight of a patch discriminator's adversarial (hinge) loss, for sharper reconstructions; "
                       "0 (default) trains on L1 + MSE only.")
    model.add_argument("--disc_start", type=int, default=0,
                       help="With --disc_weight: optimizer step from which the adversarial loss is used.")
    add_run_arguments(p, learning_rate=2e-3, batch_size=32)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    if args.resolution is None:  # the built-in Fashion-MNIST images are 28x28: larger would refuse every one
        args.resolution = 64 if args.train_data_dir or args.dataset_name else 28
    if args.resolution % args.downsample_factor or not 8 <= args.resolution <= 1024:
        p.error(f"--resolution must be in [8, 1024] and a multiple of --downsample_factor ({args.downsample_factor}), "
                f"got {args.resolution}")
    if not (math.isfinite(args.disc_weight) and args.disc_weight >= 0):
        p.error(f"--disc_weight must be a finite number >= 0, got {args.disc_weight}")
    if args.disc_start < 0:
        p.error(f"--disc_start must be >= 0, got {args.disc_start}")
    try:
        PixelGPTVQVAEConfig(image_size=args.resolution, downsample_factor=args.downsample_factor,
                                base_channels=args.base_channels, num_res_blocks=args.num_res_blocks,
                                fsq_levels=args.fsq_levels)
    except ValueError as err:
        p.error(str(err))
    args.source_dir = args.source_column = None  # read by the shared data loading; a tokenizer takes single images
    return args


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (as in pix2pix / VQGAN): one real-or-fake logit per overlapping patch. Training only."""

    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, H / 4, W / 4)


def bicubic_baseline(pixels: np.ndarray, grid: int) -> np.ndarray:
    """The same-budget baseline: each uint8 `(H, W, 3)` image shrunk to `grid` x `grid` RGB and enlarged back with
    bicubic (3 * grid**2 bytes against grid**2 tokens)."""
    size = pixels.shape[1]
    return np.stack([np.asarray(Image.fromarray(p).resize((grid, grid), Image.Resampling.BICUBIC)
                                .resize((size, size), Image.Resampling.BICUBIC)) for p in pixels])


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 `(B, H, W, C)` images (capped at 100 dB for identical images)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp(min=255.0**2 * 1e-10))


@torch.no_grad()
def evaluate(model, loader, accelerator) -> dict:
    """Held-out mean PSNR (dB) of the reconstructions, of the bicubic baseline, and the share of codes used."""
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    scores, baseline, seen = [], [], torch.zeros(unwrapped.config.codebook_size, dtype=torch.bool,
                                                 device=accelerator.device)
    for batch in loader:
        out = model(batch["pixel_values"], return_loss=False)
        images = PixelGPTVQVAE.to_uint8(batch["pixel_values"])
        scores.append(accelerator.gather_for_metrics(psnr(PixelGPTVQVAE.to_uint8(out.reconstruction), images)))
        baseline.append(accelerator.gather_for_metrics(batch["baseline_psnr"]))
        seen[out.token_ids.flatten()] = True
    seen = accelerator.reduce(seen.float(), reduction="sum") > 0  # codes used on any process
    model.train()
    return {"psnr": torch.cat(scores).mean().item(), "bicubic_psnr": torch.cat(baseline).mean().item(),
            "codebook_usage": seen.float().mean().item()}


def save_reconstructions(model, held_out_pixels: torch.Tensor, path: Path) -> Image.Image:
    """Rows of originals above their reconstructions (up to 8 per row), saved to `path`."""
    with torch.no_grad():
        decoded = PixelGPTVQVAE.to_uint8(model(held_out_pixels.to(model.device), return_loss=False).reconstruction)
    originals = PixelGPTVQVAE.to_uint8(held_out_pixels)
    tiles = []
    for i in range(0, len(originals), 8):
        tiles += [Image.fromarray(a.cpu().numpy()) for a in originals[i : i + 8]]
        tiles += [Image.fromarray(a.cpu().numpy()) for a in decoded[i : i + 8]]
    grid = make_image_grid(tiles, cols=min(8, len(originals)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def write_tokenizer_card(folder: Path, args, config: PixelGPTVQVAEConfig, metrics: dict, dataset_name,
                         num_train_images: int | None) -> None:
    """README.md: what the tokenizer does, how to load it and train a PixelGPT on it, and the measured figures."""
    repo_id = args.hub_model_id or folder.resolve().name
    images = "images streamed" if num_train_images is None else f"{num_train_images} images"  # None: --streaming
    data = f"{images} from `{dataset_name}`" if dataset_name else f"{images} from local files"
    hub_dataset = DEFAULT_DATASET_HUB_ID if dataset_name and "built-in" in dataset_name else dataset_name
    # Every held-out figure is in the YAML model-index too (PSNR of the tokenizer and of the baseline, code usage).
    figures = [("psnr", "held-out reconstruction PSNR (dB)", metrics["psnr"]),
               ("bicubic_psnr", f"held-out PSNR (dB) of the same-budget baseline: bicubic from {config.grid_size}x"
                                f"{config.grid_size} RGB", metrics["bicubic_psnr"]),
               ("codebook_usage", "share of the codebook the held-out images use", metrics["codebook_usage"])]
    local = local_data(args)
    results = [EvalResult(task_type="image-to-image", task_name="image reconstruction through the token grid",
                          dataset_type=hub_dataset or local[0], dataset_name=hub_dataset or local[1],
                          metric_type=metric_type, metric_name=name, metric_value=round(value, 4))
               for metric_type, name, value in figures]
    grid = save_card_grid(folder, "reconstructions.png")  # enlarged for the card as reconstructions_large.png
    grid_text = (f"![originals above reconstructions]({grid[0]})\n\nHeld-out originals above their reconstructions. "
                 f"{grid[1]}") if grid else ""
    card = ModelCard.from_template(
        ModelCardData(library_name="transformers", tags=["pixelgpt", "image-tokenizer", "fsq", "custom_code"],
                      datasets=[hub_dataset] if hub_dataset else None, model_name=repo_id, eval_results=results),
        template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
        body=f"""# {repo_id}

A PixelGPT image tokenizer: a convolutional autoencoder with finite scalar quantization. It turns a
{config.image_size}x{config.image_size} RGB image into a {config.grid_size}x{config.grid_size} grid of token ids
(codebook of {config.codebook_size:,}, levels {config.fsq_levels}) and back, so that a PixelGPT can generate and
edit images on the token grid. Trained on {data} for {metrics['steps']} steps.

| held-out figure | value |
|---|---|
| reconstruction PSNR | {metrics['psnr']:.2f} dB |
| same-budget baseline: bicubic from {config.grid_size}x{config.grid_size} RGB | {metrics['bicubic_psnr']:.2f} dB |
| share of the codebook in use | {metrics['codebook_usage']:.1%} |

{grid_text}

```python
from transformers import AutoModel
tokenizer = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
factor = tokenizer.config.downsample_factor  # {config.downsample_factor}
ids = tokenizer.encode(pixel_values)         # (B, 3, H, W) in [-1, 1] -> (B, H / factor, W / factor)
pixel_values = tokenizer.decode(ids)
```

Stage two: `python examples/train.py --tokenizer {repo_id} --train_data_dir ...` trains a PixelGPT on this grid.
""")
    card.save(folder / "README.md")


def run_tokenizer_training(args, accelerator, started):
    """Everything after the output folder is secured: data, tokenizer, (resumed) training, evaluation, saving."""
    set_seed(args.seed)
    settings = {name: getattr(args, name) for name in RESUME_SETTINGS} | data_settings(args)
    resume_path = find_resume_checkpoint(args, settings)
    train, held_out, dataset_name = load_splits(args)
    processor = PixelGPTImageProcessor(quantization="rgb8", image_size=args.resolution, resize_mode=args.resize_mode,
                                       resample=args.resample)
    held_out = check_images(held_out, args.image_column, processor, args.resolution, "eval", args.skip_bad_images,
                            args.output_dir)
    config = PixelGPTVQVAEConfig(image_size=args.resolution, downsample_factor=args.downsample_factor,
                                     base_channels=args.base_channels, num_res_blocks=args.num_res_blocks,
                                     fsq_levels=args.fsq_levels)
    model = PixelGPTVQVAE(config)
    discriminator = PatchDiscriminator(config.num_channels) if args.disc_weight > 0 else None
    parameters = sum(p.numel() for p in model.parameters())
    on_main_process(accelerator, lambda: check_output_dir(args.output_dir, 4 * parameters * (3 + bool(args.use_ema))))

    def collate(rows, baseline=False):  # images are decoded here, as batches are made (see make_collate)
        pixels, bad = [], []
        for row in rows:
            try:
                pixels.append(read_image(row[args.image_column], "image", processor, args.resolution)[1])
            except ValueError as err:
                bad.append(str(err))
        pixels = np.stack(pixels) if pixels else np.zeros((0, args.resolution, args.resolution, 3), np.uint8)
        # Channels-last inputs make the CPU convolutions ~20% faster (the weights can stay as they are).
        out = {"pixel_values": PixelGPTVQVAE.to_pixel_values(torch.from_numpy(pixels)).contiguous(
            memory_format=torch.channels_last), "bad_images": bad}  # (b, 3, H, W)
        if baseline:  # held-out images only
            out["baseline_psnr"] = psnr(torch.from_numpy(bicubic_baseline(pixels, config.grid_size)),
                                        torch.from_numpy(pixels))
        return out

    batches = TrainingBatches(args, accelerator, train, collate)
    eval_loader = torch.utils.data.DataLoader(held_out, batch_size=args.eval_batch_size,
                                              generator=torch.Generator().manual_seed(args.seed),  # see TrainingBatches
                                              collate_fn=partial(collate, baseline=True),
                                              num_workers=args.dataloader_num_workers)
    shown = collate(held_out[:8])["pixel_values"]

    optimizer = adamw(model.parameters(), args)
    max_steps, scheduler = schedule(args, accelerator, optimizer, batches.steps_per_epoch)
    model, optimizer, eval_loader, scheduler = accelerator.prepare(model, optimizer, eval_loader, scheduler)
    disc_optimizer = None
    if discriminator is not None:
        discriminator, disc_optimizer = accelerator.prepare(discriminator, adamw(discriminator.parameters(), args))
    ema = moving_average(args, accelerator, model)
    start_trackers(accelerator, args, "pixelgpt-tokenizer")
    global_step = resume_state(accelerator, args, resume_path, ema, batches)
    logger.info(f"{'streamed' if args.streaming else len(train)} training / {len(held_out)} held-out images, "
                f"{max_steps} steps, "
                f"{parameters / 1e6:.2f}M parameters, {config.grid_size}x{config.grid_size} tokens of "
                f"{config.codebook_size} codes per image")

    progress = tqdm(total=max_steps, initial=global_step, desc="Training tokenizer",
                    disable=not accelerator.is_local_main_process)
    models = (model,) if discriminator is None else (model, discriminator)
    model.train()
    for batch in batches if global_step < max_steps else ():
        with accelerator.accumulate(*models):
            x = batch["pixel_values"]
            out = model(x)
            loss, adversarial = out.loss, discriminator is not None and global_step >= args.disc_start
            if adversarial:  # the generator side of the hinge loss: make reconstructions look real
                loss = loss - args.disc_weight * discriminator(out.reconstruction).mean()
            optimizer_step(accelerator, args, model, loss, optimizer, scheduler, global_step + 1)
            if adversarial:
                disc_optimizer.zero_grad()  # drop what the generator loss left on it
                real, fake = discriminator(x), discriminator(out.reconstruction.detach())
                accelerator.backward(F.relu(1 - real).mean() + F.relu(1 + fake).mean())
                disc_optimizer.step()
                disc_optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        progress.update(1)
        progress.set_postfix(loss=f"{out.loss.item():.4f}")
        if global_step % args.logging_steps == 0:
            accelerator.log({"train/loss": out.loss.item(), "train/lr": scheduler.get_last_lr()[0]},
                            step=global_step)
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, global_step, ema, settings, batches.state())
        if global_step % args.eval_steps == 0 and global_step < max_steps:
            figures = evaluate(model, eval_loader, accelerator)
            accelerator.log({f"eval/{k}": v for k, v in figures.items()}, step=global_step)
            logger.info(f"step {global_step}: held-out PSNR {figures['psnr']:.2f} dB (bicubic "
                        f"{figures['bicubic_psnr']:.2f}), codebook usage {figures['codebook_usage']:.1%}")
        if global_step % args.sample_steps == 0 and global_step < max_steps and accelerator.is_main_process:
            save_reconstructions(accelerator.unwrap_model(model), shown,
                                 Path(args.output_dir, "samples", f"step-{global_step:06d}.png"))
        if global_step >= max_steps:
            break
    progress.close()
    bad_images = batches.all_bad_images()  # met by any process (skipped, with --skip_bad_images)
    if bad_images and accelerator.is_main_process:
        write_skipped(args.output_dir, "train", bad_images)

    accelerator.wait_for_everyone()
    final_model, state_dict = final_weights(accelerator, args, model, ema, global_step)
    figures = evaluate(model, eval_loader, accelerator)
    logger.info(f"final held-out PSNR {figures['psnr']:.2f} dB (same-budget bicubic {figures['bicubic_psnr']:.2f} "
                f"dB), codebook usage {figures['codebook_usage']:.1%}")
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        final_model.save_pretrained(out, state_dict=state_dict)
        processor.save_pretrained(out)
        save_reconstructions(final_model, shown, out / "reconstructions.png")
        metrics = dict(figures, steps=global_step, train_seconds=round(time.time() - started, 1),
                       skipped_train_images=len(bad_images),
                       codebook_size=config.codebook_size, grid_size=config.grid_size)
        (out / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        write_tokenizer_card(out, args, config, metrics, dataset_name, None if args.streaming else len(train))
        if args.push_to_hub:
            push_folder(args, out, f"PixelGPT tokenizer, step {global_step}")
    del model, optimizer, batches, eval_loader, scheduler, discriminator, disc_optimizer
    accelerator.free_memory()
    accelerator.end_training()
    return figures


def main(args):
    return launch(args, run_tokenizer_training)
