"""What is particular to training the image tokenizer (stage one of two): its autoencoder and optional patch
discriminator, held-out PSNR against the same-budget bicubic baseline, reconstruction grids and card. The loop,
checkpoints and saving are `loop.Trainer`'s."""

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from PIL import Image
from torch import nn

from ..cards import write_tokenizer_card
from ..modeling.modeling_pixelgpt_vqvae import PixelGPTVQVAE
from ..processing import PixelGPTImageProcessor
from ..utils import TrainingError, make_image_grid, psnr
from .arguments import TokenizerTrainingArguments
from .checkpoints import diverged_message
from .data import read_image
from .loop import Budget, Trainer, adamw, launch
from .workspace import agreed, all_ranks

logger = get_logger(__name__)

# The default length of a tokenizer's training (docs/training.md#step-budgets): 4 passes (the built-in 6,000 images:
# 24.6 dB after 800 steps), at most 50M pixels read (1,993 steps of 32 28x28 images, ~4 minutes on a 2-core CPU; 381
# of 64x64 ones).
TOKENIZER_PASSES, TOKENIZER_BUDGET = 4, 50_000_000

# What a tokenizer checkpoint is only meaningful with (a resume with another value is refused, naming it).
RESUME_SETTINGS = ("resolution", "resize_mode", "downsample_factor", "base_channels", "num_res_blocks", "fsq_levels",
                   "use_ema", "disc_weight")


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


@torch.no_grad()
def evaluate(model, loader, accelerator) -> dict | None:
    """Held-out mean PSNR (dB) of the reconstructions, of the bicubic baseline, and the share of codes used; None
    (on every process) when some reconstruction is not finite: weights that are finite but too large overflow."""
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    scores, baseline, seen = [], [], torch.zeros(unwrapped.config.codebook_size, dtype=torch.bool,
                                                 device=accelerator.device)
    finite = True
    for batch in loader:
        out = model(batch["pixel_values"], return_loss=False)
        finite = finite and bool(torch.isfinite(out.reconstruction).all())
        if not finite:  # NaN latents have no code: their ids are garbage
            continue
        images = PixelGPTVQVAE.to_uint8(batch["pixel_values"])
        scores.append(accelerator.gather_for_metrics(psnr(PixelGPTVQVAE.to_uint8(out.reconstruction), images)))
        baseline.append(accelerator.gather_for_metrics(batch["baseline_psnr"]))
        seen[out.token_ids.flatten()] = True
    model.train()
    if not all_ranks(accelerator, finite):
        return None
    seen = accelerator.reduce(seen.float(), reduction="sum") > 0  # codes used on any process
    return {"psnr": torch.cat(scores).mean().item(), "bicubic_psnr": torch.cat(baseline).mean().item(),
            "codebook_usage": seen.float().mean().item()}


def reconstruction_grid(model, held_out_pixels: torch.Tensor) -> Image.Image:
    """Rows of originals above their reconstructions (up to 8 per row)."""
    with torch.no_grad():
        decoded = PixelGPTVQVAE.to_uint8(model(held_out_pixels.to(model.device), return_loss=False).reconstruction)
    originals = PixelGPTVQVAE.to_uint8(held_out_pixels)
    tiles = []
    for i in range(0, len(originals), 8):
        tiles += [Image.fromarray(a.cpu().numpy()) for a in originals[i : i + 8]]
        tiles += [Image.fromarray(a.cpu().numpy()) for a in decoded[i : i + 8]]
    return make_image_grid(tiles, cols=min(8, len(originals)))


class TokenizerTrainer(Trainer):
    """Trains the image tokenizer: reconstruction loss (L1 + MSE), and with --disc_weight a patch discriminator."""

    description = "Training tokenizer"
    title = "PixelGPT tokenizer"
    grid_name = "reconstructions.png"
    resume_settings = RESUME_SETTINGS

    def __init__(self, args: TokenizerTrainingArguments, accelerator, started: float, stage: str | None = None):
        super().__init__(args, accelerator, started, stage)
        tok, data = args.tokenizer, args.data
        self.find_resume()
        processor = self.processor = PixelGPTImageProcessor(quantization="rgb8", image_size=tok.resolution,
                                                            resize_mode=tok.resize_mode, resample=tok.resample)
        train, held_out, self.dataset_name = self.load_data(processor)
        config = self.config = tok.config()
        model = PixelGPTVQVAE(config)
        discriminator = PatchDiscriminator(config.num_channels) if tok.disc_weight > 0 else None
        self.parameters = sum(p.numel() for p in model.parameters())

        def collate(rows, baseline=False):  # images are decoded here, as batches are made (see data.make_collate)
            pixels, bad = [], []
            for row in rows:
                try:
                    pixels.append(read_image(row[data.image_column], "image", processor, tok.resolution)[1])
                except ValueError as err:
                    bad.append(str(err))
            pixels = np.stack(pixels) if pixels else np.zeros((0, tok.resolution, tok.resolution, 3), np.uint8)
            # Channels-last inputs make the CPU convolutions ~20% faster (the weights can stay as they are).
            out = {"pixel_values": PixelGPTVQVAE.to_pixel_values(torch.from_numpy(pixels)).contiguous(
                memory_format=torch.channels_last), "bad_images": bad}  # (b, 3, H, W)
            if baseline:  # held-out images only
                out["baseline_psnr"] = psnr(torch.from_numpy(bicubic_baseline(pixels, config.grid_size)),
                                            torch.from_numpy(pixels))
            return out

        self.prepare(model, model.parameters(), train, held_out, collate, partial(collate, baseline=True),
                     budget=Budget(TOKENIZER_PASSES, units_per_image=args.tokenizer.resolution ** 2,
                                   max_units=TOKENIZER_BUDGET))
        self.shown_pixels = collate(held_out[:8])["pixel_values"]
        self.discriminator = self.disc_optimizer = None
        if discriminator is not None:
            self.discriminator, self.disc_optimizer = accelerator.prepare(discriminator,
                                                                          adamw(discriminator.parameters(), self.run))
            self.models = (self.model, self.discriminator)
        self.num_train_images = None if data.streaming else len(train)
        self.resume()
        logger.info(f"{'streamed' if data.streaming else len(train)} training / {len(held_out)} held-out images, "
                    f"{self.max_steps} steps, {self.parameters / 1e6:.2f}M parameters, {config.grid_size}x"
                    f"{config.grid_size} tokens of {config.codebook_size} codes per image")

    def loss(self, batch, step: int):
        x = batch["pixel_values"]
        out = self.model(x)
        self.adversarial = self.discriminator is not None and step >= self.args.tokenizer.disc_start
        self.last = (x, out)
        loss = out.loss
        if self.adversarial:  # the generator side of the hinge loss: make reconstructions look real
            loss = loss - self.args.tokenizer.disc_weight * self.discriminator(out.reconstruction).mean()
        return loss

    def after_step(self, step: int) -> None:
        if self.adversarial:
            x, out = self.last
            self.disc_optimizer.zero_grad()  # drop what the generator loss left on it
            real, fake = self.discriminator(x), self.discriminator(out.reconstruction.detach())
            self.accelerator.backward(F.relu(1 - real).mean() + F.relu(1 + fake).mean())
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad()

    def shown(self, loss):
        value = self.last[1].loss.item()  # the reconstruction loss, without the adversarial term
        return {"loss": f"{value:.4f}"}, {"train/loss": value}

    def evaluate(self, step: int, final: bool = False) -> dict:
        figures = evaluate(self.model, self.eval_loader, self.accelerator)
        if figures is None:
            raise agreed(self.accelerator, TrainingError(diverged_message(
                self.run, step, "the held-out reconstructions hold NaN or infinite values (the weights are finite but "
                "too large)")))
        self.log_figures(step, figures, f"held-out PSNR {figures['psnr']:.2f} dB (same-budget bicubic "
                         f"{figures['bicubic_psnr']:.2f} dB), codebook usage {figures['codebook_usage']:.1%}", final)
        return figures

    def sample_grid(self):
        return reconstruction_grid(self.accelerator.unwrap_model(self.model), self.shown_pixels)

    def final_metrics(self, figures: dict) -> dict:
        return dict(figures, codebook_size=self.config.codebook_size, grid_size=self.config.grid_size)

    def write_card(self, folder, metrics: dict) -> None:
        write_tokenizer_card(folder, self.args, self.config, metrics, self.dataset_name, self.num_train_images)

    def release(self) -> None:
        self.discriminator = self.disc_optimizer = self.last = None


def main(args: TokenizerTrainingArguments) -> dict:
    """Train an image tokenizer as `args` say (from `parse_tokenizer_args`); returns the final held-out figures."""
    return launch(args.run, lambda accelerator, started: TokenizerTrainer(args, accelerator, started).train())
