"""What is particular to training a PixelGPT: its processor (and palette, or a carried image tokenizer), its config
and model, the task's loss (k-ahead, random orders, conditions, class dropout), held-out bits, sample grids and card.
The loop, checkpoints and saving are `loop.Trainer`'s."""

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from PIL import Image

from ..cards import (
    index_results,
    prompt_section,
    sample_quality_section,
    training_data,
    update_model_card,
    write_model_card,
)
from ..default_data import load_emoji_dataset
from ..modeling import PixelGPTConfig, PixelGPTForImageGeneration
from ..modeling.layouts_pixelgpt import task_inputs
from ..processing import PixelGPTImageProcessor
from ..prompt_quality import PROMPT_GUIDANCE, measure_prompts
from ..prompt_quality import markdown as prompt_markdown
from ..quality import RealImages, measure, quantized
from ..utils import class_name, make_image_grid, open_image
from .arguments import TokenizerTrainingArguments, TrainingArguments
from .checkpoints import list_checkpoints, recorded_settings, remove_partial_checkpoints
from .data import (
    encode_with_tokenizer,
    load_tokenizer,
    make_collate,
    read_image,
    resolve_label_column,
    tokenizer_digest,
)
from .loop import Budget, Trainer, launch
from .text import captioned_processor, drop_words, token_ids
from .tokenizer import TokenizerTrainer

logger = get_logger(__name__)

# The default length of a run (docs/training.md#step-budgets). A pixel model: 2 passes (as before two stages were the
# default). On tokens: 10 passes (the held-out loss of the built-in 6,000 images is lowest near there; 21 passes
# overfit), at most 10M tokens read (6,377 steps of 32 7x7 grids, ~10 minutes on a 2-core CPU; 1,220 of 16x16).
PIXEL_BUDGET = Budget(passes=2)
TOKEN_PASSES, TOKEN_BUDGET = 10, 10_000_000

# Where a text run keeps its prompt tokenizer from the start (a resumed run reads prompts with the same ids); the
# finished model folder holds it too, beside the weights.
PROMPT_TOKENIZER = "prompt-tokenizer"

# What a checkpoint is only meaningful with: resuming with another value is refused, naming the setting.
RESUME_SETTINGS = ("resolution", "quantization", "num_levels", "fit_palette", "palette_size", "resize_mode",
                   "task", "condition_quantization", "condition_num_levels", "condition_size", "model_size",
                   "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "class_conditional",
                   "parallel_tokens", "use_ema", "inpaint_fill_order", "aligned_condition", "condition_prefix",
                   "class_embedding", "text_conditional", "caption_column", "text_vocab_size")


def run_settings(args: TrainingArguments, tokenizer=None) -> dict:
    """The RESUME_SETTINGS of this run, with the model size as it resolves (a preset's width given explicitly, or
    the derived MLP width, is the same model) and the `tokenizer` by its weights' digest (checkpoints before it
    recorded the --tokenizer path, which is no longer compared)."""
    settings = recorded_settings(args, RESUME_SETTINGS)
    settings["tokenizer_digest"] = tokenizer_digest(tokenizer) if tokenizer is not None else None
    resolved = PixelGPTConfig(**args.model.sizes())
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        settings[name] = getattr(resolved, name)
    return settings


def task_loss(model, accelerator, batch, k=1, box_probability=0.5, generator=None, reduction="mean", hole_weight=1.0,
              box_sides=(0.0, 1.0)):
    """Cross-entropy through the prepared model, for the model's task: k-ahead prediction for "generate" (k = 1:
    the usual next-token loss), random orders for "inpaint", raster order after the condition for the rest.
    `hole_weight` weighs an inpainting order's rectangle against the pixels before it (in the mean loss);
    `box_sides` bounds the rectangle's sides (fractions of the image side)."""
    config = accelerator.unwrap_model(model).config
    inputs = task_inputs(config, batch["input_ids"], k, box_probability, generator, box_sides=box_sides)
    labels, hole = inputs.pop("labels"), inputs.pop("hole", None)
    logits = model(**inputs, condition_ids=batch.get("condition_ids"), text_ids=batch.get("text_ids"),
                   use_cache=False).logits
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


# A class-conditional model's grid: one row per class (the first ones, when there are more), at this guidance when
# the model learned the unconditional token it needs (--class_dropout_prob > 0).
GRID_MAX_CLASSES, GRID_GUIDANCE = 16, 3.0


def class_grid_labels(num_classes: int, num_samples: int) -> tuple[list, int]:
    """(labels, columns) of a class-conditional grid: one row per class (at most GRID_MAX_CLASSES), at least 8
    samples a row and together at least `num_samples`."""
    rows = min(num_classes, GRID_MAX_CLASSES)
    cols = max(8, -(-num_samples // rows))
    return [c for c in range(rows) for _ in range(cols)], cols


def prompt_grid_prompts(processor, captions, num_samples: int) -> tuple[list, int]:
    """(prompts, columns) of a text model's grid: one row per distinct caption that fits the model's prompt length
    (GRID_MAX_CLASSES // 2 of them, spread over the list: neighbours in a folder tend to be alike), at least 4
    samples a row and together at least `num_samples`."""
    fits = [str(c) for c, ids in zip(captions, token_ids(processor.tokenizer, captions))
            if c and len(ids) <= processor.max_text_length]
    distinct, rows = list(dict.fromkeys(fits)), GRID_MAX_CLASSES // 2
    prompts = distinct[:: max(1, len(distinct) // rows)][:rows] or [""]
    return prompts, max(4, -(-num_samples // len(prompts)))


def sample_grid(model, processor, held_out: list, num_samples: int, seed: int, condition_column: str,
                guidance_scale: float = 1.0, caption_column: str | None = None):
    """A grid of samples; conditional models show (condition, output) pairs for the first held-out images (their
    `condition_column`), class-conditional ones one row per class, text models one row per held-out caption (of
    `caption_column`; `processor` is then the PixelGPTProcessor), each at `guidance_scale`."""
    sampling = dict(image_processor=processor, generator=torch.Generator().manual_seed(seed),
                    batch_size=num_samples, show_progress=False)
    if model.config.is_text_conditional and not model.config.is_conditional:
        prompts, cols = prompt_grid_prompts(processor, [row[caption_column] for row in held_out], num_samples)
        sampling["batch_size"] = len(prompts) * cols
        images = model.generate_images(cols, prompt=prompts, guidance_scale=guidance_scale, **sampling)
        return make_image_grid(images, cols=cols)
    if model.config.is_conditional:
        sources = [open_image(row[condition_column], "image") for row in held_out[: max(1, num_samples // 2)]]
        outputs = model.translate_images(sources, **sampling)
        condition = processor.condition_processor
        shown = condition.decode(condition(sources).input_ids)  # what the model reads, as an image
        shown = [c.resize((processor.image_size,) * 2, Image.Resampling.NEAREST) for c in shown]
        images = [image for pair in zip(shown, outputs) for image in pair]
    elif model.config.num_classes:
        labels, cols = class_grid_labels(model.config.num_classes, num_samples)
        sampling["batch_size"] = len(labels)  # at least num_samples
        images = model.generate_images(1, class_labels=labels, guidance_scale=guidance_scale, **sampling)
        return make_image_grid(images, cols=cols)
    else:
        images = model.generate_images(num_samples, **sampling)
    return make_image_grid(images, cols=min(8, len(images)))


def fit_palette(processor, train, args: TrainingArguments) -> None:
    """Learn the k-means palette of `--fit_palette` from up to --palette_samples training images."""
    data, image, seed = args.data, args.image, args.run.seed
    rows = (itertools.islice(train.shuffle(seed=seed, buffer_size=data.shuffle_buffer_size), image.palette_samples)
            if data.streaming else train.shuffle(seed=seed).select(range(min(image.palette_samples, len(train)))))
    sample = []
    for row in rows:
        try:
            sample.append(read_image(row[data.image_column], "image", processor, image.resolution)[0])
        except ValueError:  # met again, and counted, in training
            pass
    if not sample:
        raise ValueError("None of the images sampled to fit the palette can be read (see --skip_bad_images).")
    processor.fit_palette(sample, image.palette_size, seed=seed)
    logger.info(f"Fitted a {processor.vocab_size}-colour palette on {len(sample)} images")


def build_processor(args: TrainingArguments, tokenizer) -> PixelGPTImageProcessor:
    """The run's image processor; with a tokenizer it only resizes to 8-bit RGB pixels (the tokenizer makes the
    tokens)."""
    image, model = args.image, args.model
    condition = {}
    if model.is_conditional:
        condition = dict(condition_quantization=model.condition_quantization,
                         condition_num_levels=model.condition_num_levels, condition_size=model.condition_size)
    return PixelGPTImageProcessor(quantization="rgb8" if image.fit_palette or tokenizer else image.quantization,
                                  num_levels=image.num_levels, image_size=image.resolution,
                                  resize_mode=image.resize_mode, resample=image.resample, **condition)


def condition_patch_size(condition_size: int | None, grid_size: int, tokenizer) -> int:
    """On a tokenizer's grid, a condition finer than the grid by a whole factor is read a cell per token (the
    pixels under it: as long a prefix as one pixel per token, with all the detail); else one pixel per row."""
    if tokenizer is None or not condition_size or condition_size % grid_size:
        return 1
    return condition_size // grid_size


def build_config(args: TrainingArguments, processor, tokenizer, num_classes: int, class_names,
                 text_processor=None) -> PixelGPTConfig:
    model = args.model
    config_kwargs = model.sizes()
    if text_processor is not None:
        config_kwargs.update(text_vocab_size=len(text_processor.tokenizer), text_pad_token_id=
                             text_processor.tokenizer.pad_token_id, max_text_length=text_processor.max_text_length)
    if model.class_conditional:
        config_kwargs.update(num_classes=num_classes, class_embedding=model.class_embedding)
        if class_names:
            config_kwargs["id2label"] = dict(enumerate(class_names))
    vocab_size, grid_size = processor.vocab_size, args.image.resolution
    if tokenizer is not None:
        vocab_size, grid_size = tokenizer.config.codebook_size, grid_size // tokenizer.config.downsample_factor
    return PixelGPTConfig(vocab_size=vocab_size, image_size=grid_size,
                          tokens_per_pixel=1 if tokenizer else processor.tokens_per_pixel,
                          parallel_tokens=model.parallel_tokens,
                          task=model.task, condition_size=processor.condition_size,
                          condition_patch_size=condition_patch_size(processor.condition_size, grid_size, tokenizer),
                          condition_vocab_size=processor.condition_vocab_size,
                          aligned_condition=model.aligned_condition and model.is_conditional,
                          condition_prefix=model.condition_prefix, inpaint_fill_order=model.inpaint_fill_order,
                          tokenizer_config=tokenizer.config if tokenizer is not None else None, **config_kwargs)


class PixelGPTTrainer(Trainer):
    """Trains a PixelGPT (on pixels, or on the token grid of a carried image tokenizer) for its task."""

    def __init__(self, args: TrainingArguments, accelerator, started: float, stage: str | None = None,
                 stage_one: Path | None = None):
        super().__init__(args, accelerator, started, stage)
        self.stage_one = stage_one  # the folder of a tokenizer trained earlier in this run
        data, image, model_args = args.data, args.image, args.model
        tokenizer = load_tokenizer(image.tokenizer) if image.tokenizer else None
        self.find_resume(run_settings(args, tokenizer))

        processor = self.processor = build_processor(args, tokenizer)
        checks = [(data.source_column, processor.condition_processor, "eval_source")] if data.source_column else []
        train, held_out, self.dataset_name = self.load_data(processor, checks)
        label_column, num_classes, class_names = None, 0, None
        if model_args.class_conditional:  # labels are read only when they are used
            label_column, num_classes, class_names = resolve_label_column(data.label_column, train)
        self.text_processor = None
        if model_args.text_conditional:  # the prompt tokenizer, trained on the captions (kept for a resume)
            self.text_processor = captioned_processor(processor, train, data, model_args.text_vocab_size, accelerator,
                                                      Path(self.run.output_dir, PROMPT_TOKENIZER),
                                                      self.resume_path is not None)
        if image.fit_palette:
            fit_palette(processor, train, args)
        encode_bad = []
        if tokenizer is not None and not data.streaming:  # encoded once, not at every pass (a stream as it is read)
            # Each machine's main process encodes and caches (on its own disk); that machine's others read it.
            with accelerator.local_main_process_first():
                train, encode_bad = encode_with_tokenizer(train, tokenizer, processor, data, model_args.task, "train")

        config = self.config = build_config(args, processor, tokenizer, num_classes, class_names, self.text_processor)
        model = PixelGPTForImageGeneration(config)
        if tokenizer is not None:  # carried frozen: saved with the model, never trained here
            model.image_tokenizer.load_state_dict(tokenizer.state_dict())
        if model_args.gradient_checkpointing:
            model.activation_checkpointing_enable()
        collate = make_collate(processor, config, data, label_column, tokenizer, self.text_processor)
        trained = [p for p in model.parameters() if p.requires_grad]  # not a carried tokenizer
        self.prepare(model, trained, train, held_out, collate, budget=self.budget(config, tokenizer))
        self.batches.bad_images.update(dict.fromkeys(encode_bad))
        self.held_out, self.num_train_images = held_out, None if data.streaming else len(train)
        self.train_rows, self.label_column, self.class_names = train, label_column, class_names
        self.bits_name = "bits_per_dim" if processor.bits_per_token_is_bits_per_dim and not tokenizer else \
            "bits_per_token"
        self.resume()
        logger.info(f"{'streamed' if data.streaming else len(train)} training / {len(held_out)} held-out images, "
                    f"{self.max_steps} steps, {sum(p.numel() for p in trained) / 1e6:.2f}M trained parameters"
                    f"{' (and the frozen tokenizer)' if tokenizer is not None else ''}, "
                    f"{config.num_image_tokens} tokens per image")
        self.untrained_bits = self.evaluate(0, untrained=True) if self.step == 0 else None
        self.tokens_seen, self.tick = 0, time.time()

    @staticmethod
    def budget(config, tokenizer) -> Budget:
        if tokenizer is None:
            return PIXEL_BUDGET
        return Budget(TOKEN_PASSES, units_per_image=config.num_image_tokens, max_units=TOKEN_BUDGET)

    def loss(self, batch, step: int):
        model_args, accelerator = self.args.model, self.accelerator
        # k-ahead steps teach parallel decoding; the draw uses torch's RNG, which checkpoints restore.
        k = 1
        if model_args.parallel_tokens > 1 and torch.rand(()) < model_args.parallel_fraction:
            k = model_args.parallel_tokens
        input_ids = batch["input_ids"]
        if model_args.class_conditional and model_args.class_dropout_prob > 0:
            # Condition dropout: some images learn the unconditional start token, for guidance.
            dropped = torch.rand(input_ids.shape[0], device=input_ids.device) < model_args.class_dropout_prob
            input_ids = input_ids.clone()
            input_ids[dropped, 0] = self.config.start_token_id
        if "text_ids" in batch:  # prompt dropout (for guidance) and word dropout, from torch's RNG likewise
            batch = dict(batch, text_ids=drop_words(batch["text_ids"], model_args.prompt_dropout_prob,
                                                    model_args.caption_word_dropout, self.config.text_pad_token_id))
        # Random orders and boxes draw from torch's global RNG, which checkpoints restore.
        box_probability = model_args.inpaint_box_probability
        if model_args.inpaint_box_warmup > 0:  # depends on the step only, so a resumed run anneals alike
            box_probability *= min(1.0, step / (model_args.inpaint_box_warmup * self.max_steps))
        loss = task_loss(self.model, accelerator, dict(batch, input_ids=input_ids), k, box_probability,
                         hole_weight=model_args.inpaint_hole_weight, box_sides=tuple(model_args.inpaint_box_sides))
        self.tokens_seen += batch["input_ids"][:, 1:].numel() * accelerator.num_processes
        return loss

    def shown(self, loss):
        value = loss.item()
        rate = self.tokens_seen / max(time.time() - self.tick, 1e-9)
        postfix = {"loss": f"{value:.3f}", self.bits_name: f"{value / math.log(2):.3f}", "tok_s": f"{rate:,.0f}"}
        return postfix, {"train/loss": value, f"train/{self.bits_name}": value / math.log(2),
                         "train/tokens_per_s": rate}

    def evaluate(self, step: int, final: bool = False, untrained: bool = False) -> dict:
        held_out = evaluate(self.model, self.eval_loader, self.accelerator, seed=self.run.seed)
        if untrained:
            logger.info(f"untrained held-out {self.bits_name}: {held_out:.4f}")
            return held_out
        figures = {self.bits_name: held_out}
        self.log_figures(step, figures, f"held-out {self.bits_name} {held_out:.4f}", final)
        k = self.args.model.parallel_tokens
        if final and k > 1:
            figures[f"{self.bits_name}_{k}_ahead"] = ahead = evaluate(self.model, self.eval_loader, self.accelerator,
                                                                      k=k, seed=self.run.seed)
            logger.info(f"final held-out {self.bits_name} of {k}-ahead prediction: {ahead:.4f}")
        return figures

    def sample_grid(self):
        data, guidance = self.args.data, self.grid_guidance()
        return sample_grid(self.accelerator.unwrap_model(self.model), self.text_processor or self.processor,
                           self.held_out, self.run.num_samples, self.run.seed, data.source_column or data.image_column,
                           guidance, data.caption_column)

    def final_metrics(self, figures: dict) -> dict:
        metrics = {self.bits_name: figures[self.bits_name], "untrained_" + self.bits_name: self.untrained_bits}
        metrics.update({k: v for k, v in figures.items() if k not in metrics})
        if self.stage_one is not None:  # --tokenizer train: the tokenizer's figures, from its own results
            tokenizer = json.loads((self.stage_one / "eval_results.json").read_text())
            metrics.update({f"tokenizer_{k}": tokenizer[k] for k in ("psnr", "bicubic_psnr", "codebook_usage",
                                                                     "steps")})
        return metrics

    def after_save(self, folder: Path, metrics: dict) -> None:
        """Class-conditional runs: judge the final model's samples (--quality_samples) and add the figures to the
        folder's eval_results.json, sample_quality.json and card."""
        data, model_args = self.args.data, self.args.model
        if self.text_processor is not None:  # the prompt tokenizer beside the image processor (AutoProcessor)
            self.text_processor.save_pretrained(folder)
            update_model_card(folder, key="prompts", title="Prompts", eval_results=[], body=prompt_section(
                self.text_processor.max_text_length, self.grid_prompts()))
            if data.is_default and data.builtin_data == "emoji" and model_args.quality_samples:
                self.judge_prompts(folder, metrics)
        if not (model_args.class_conditional and model_args.quality_samples):
            return
        if data.streaming:  # the judging classifier needs a sample of the training images, which a stream lacks
            logger.info("--quality_samples: skipped for a streamed dataset (examples/sample_quality.py measures the "
                        "saved model on an image folder or dataset)")
            return
        started = time.time()
        try:
            report = measure_class_samples(self.accelerator.unwrap_model(self.model), self.processor,
                                           self.train_rows, self.held_out, data, self.label_column, self.class_names,
                                           model_args.quality_samples, tuple(model_args.quality_guidance),
                                           self.run.seed)
        except ValueError as err:  # too few images to judge by (the model is saved: the run does not fail here)
            logger.warning(f"--quality_samples: skipped, {err}")
            return
        (folder / "sample_quality.json").write_text(json.dumps(report, indent=2))
        body, figures = sample_quality_section(report)
        _, index, _ = training_data(self.dataset_name, data, self.num_train_images)
        update_model_card(folder, key="sample_quality", title="Sample quality", body=body,
                          eval_results=index_results("unconditional-image-generation", index, figures))
        metrics.update({name: value for name, _, value in figures}, quality_seconds=round(time.time() - started, 1))
        (folder / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        first = report["trained_model_samples"]
        logger.info(f"samples at guidance {report['sampling']['guidance_scale']:g}: class match "
                    f"{first['matches_requested_class']:.1%}, recognised {first['recognised_share']:.1%} (real images "
                    f"{report['real_test_images']['recognised_share']:.1%}); on the card")

    def grid_prompts(self) -> list[str]:
        """The prompts of a text model's grid: the held-out captions that fit (`prompt_grid_prompts`)."""
        captions = [row[self.args.data.caption_column] for row in self.held_out]
        return prompt_grid_prompts(self.text_processor, captions, self.run.num_samples)[0]

    def grid_guidance(self) -> float:
        """The guidance of the sample grids: GRID_GUIDANCE for classes, PROMPT_GUIDANCE for prompts, 1 for a model
        that never learned the unconditional branch (a dropout of 0)."""
        model_args = self.args.model
        if model_args.text_conditional:
            return PROMPT_GUIDANCE if model_args.prompt_dropout_prob > 0 else 1.0
        return GRID_GUIDANCE if model_args.class_dropout_prob > 0 else 1.0

    def judge_prompts(self, folder: Path, metrics: dict) -> None:
        """A text model on the built-in emoji: `pixelgpt.prompt_quality` (colour words, held-out pairs, skin tones,
        retrieval; the first three also stressed) on its card, eval_results.json and prompt_quality.json."""
        model_args, started = self.args.model, time.time()
        try:
            real = load_emoji_dataset(grid_repeats=1, recoloured_copies=0)  # each real emoji once
            report = measure_prompts(self.accelerator.unwrap_model(self.model), real,
                                     num_samples=max(1, model_args.quality_samples // PROMPT_QUALITY_SHARE),
                                     guidance_scale=PROMPT_GUIDANCE, seed=self.run.seed,
                                     processor=self.text_processor)
        except ValueError as err:  # e.g. a prompt this model's tokenizer spells longer than it reads
            logger.warning(f"--quality_samples: skipped, {err}")
            return
        (folder / "prompt_quality.json").write_text(json.dumps(report, indent=2))
        figures = [(f"prompt_quality_{name}", f"{title} (trained model samples)",
                    report[section]["trained_model_samples"][key]) for name, title, section, key in PROMPT_FIGURES]
        index = training_data(self.dataset_name, self.args.data, self.num_train_images)[1]
        update_model_card(folder, key="prompt_quality", title="Do samples follow their prompts?",
                          body=prompt_markdown(report), eval_results=index_results("text-to-image", index, figures))
        metrics.update({name: value for name, _, value in figures},
                       prompt_quality_seconds=round(time.time() - started, 1))
        (folder / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        logger.info(f"prompts at guidance {PROMPT_GUIDANCE:g}: colour words "
                    f"{report['colour_words']['trained_model_samples']['accuracy']:.1%}, held-out pairs "
                    f"{report['composition']['trained_model_samples']['accuracy']:.1%}, skin-tone order "
                    f"{report['skin_tones']['trained_model_samples']['in_order_share']:.1%}; stressed: "
                    f"{report['colour_words_stressed']['trained_model_samples']['accuracy']:.1%}, "
                    f"{report['composition_stressed']['trained_model_samples']['accuracy']:.1%}, "
                    f"{report['skin_tones_stressed']['trained_model_samples']['in_order_share']:.1%}; on the card")

    def write_card(self, folder, metrics: dict) -> None:
        note, prompts = None, self.grid_prompts() if self.text_processor is not None else None
        guidance = self.grid_guidance()
        if prompts:
            note = f"Samples of the final model, one prompt per row (guidance {guidance:g}): " + ", ".join(
                f'"{p}"' for p in prompts) + "."
        if self.config.num_classes:
            names = [class_name(self.config, c) or str(c) for c in range(min(self.config.num_classes,
                                                                              GRID_MAX_CLASSES))]
            note = (f"Samples of the final model, one class per row (guidance {guidance:g}): "
                    f"{', '.join(names)}{'' if len(names) == self.config.num_classes else ', ...'}.")
        write_model_card(folder, args=self.args, config=self.config,
                         processor=self.processor, dataset_name=self.dataset_name, metrics=metrics,
                         bits_name=self.bits_name, num_train_images=self.num_train_images, grid_note=note,
                         prompt=prompts[0] if prompts else None, guidance=guidance)


# A text run on the built-in emoji judges --quality_samples / PROMPT_QUALITY_SHARE samples per prompt (8 of 200):
# 22 colour prompts, 5 held-out pairs and 30 skin-tone prompts (twice: plain and stressed) and 193 retrieval
# captions, for the model and an untrained copy, ~1.5 minutes on a 2-core CPU. PROMPT_FIGURES: (name, title, report
# section, key) of its figures.
PROMPT_QUALITY_SHARE = 25
PROMPT_FIGURES = (("colour_words", "colour words right", "colour_words", "accuracy"),
                  ("held_out_pairs", "held-out colour x shape pairs right", "composition", "accuracy"),
                  ("held_out_pairs_shaped", "held-out pairs right in colour and shape", "composition",
                   "colour_and_shape_accuracy"),
                  ("skin_tone_order", "skin-tone pairs in order", "skin_tones", "in_order_share"),
                  ("retrieval_top5", "retrieval top-5 among the test images", "retrieval", "top_5"),
                  ("colour_words_stressed", "colour words right, colour stressed", "colour_words_stressed",
                   "accuracy"),
                  ("held_out_pairs_stressed", "held-out pairs right, colour stressed", "composition_stressed",
                   "accuracy"),
                  ("held_out_pairs_shaped_stressed", "held-out pairs right in colour and shape, colour stressed",
                   "composition_stressed", "colour_and_shape_accuracy"),
                  ("skin_tone_order_stressed", "skin-tone pairs in order, tone stressed", "skin_tones_stressed",
                   "in_order_share"))

# Training images the judging classifier of --quality_samples learns from (as examples/sample_quality.py).
QUALITY_CLASSIFIER_IMAGES = 6000


def measure_class_samples(model, processor, train, held_out: list, data, label_column: str, class_names,
                          num_samples: int, guidance: tuple, seed: int) -> dict:
    """`pixelgpt.quality.measure` of a class-conditional model at each `guidance` scale, its classifier trained on up to
    QUALITY_CLASSIFIER_IMAGES of the run's training images and checked on its held-out ones, each as the model sees
    it (through the processor; grayscale data stays gray)."""

    def seen(values):
        images = [open_image(value, "image") for value in values]
        shown = quantized(processor, images)
        return [s.convert("L") for s in shown] if all(i.mode == "L" for i in images) else shown

    rows = train.shuffle(seed=seed).select(range(min(QUALITY_CLASSIFIER_IMAGES, len(train))))
    names = class_names or [str(c) for c in range(model.config.num_classes)]
    real = RealImages.from_images(names, seen(rows[data.image_column]), rows[label_column],
                                  seen([row[data.image_column] for row in held_out]),
                                  [row[label_column] for row in held_out])
    return measure(model, processor, real, num_samples=num_samples, guidance_scales=guidance, seed=seed)


def tokenizer_stage(args: TrainingArguments) -> TokenizerTrainingArguments:
    """Stage one of `--tokenizer train`: a tokenizer trained on the run's images into <output_dir>/tokenizer, with
    the run's data, optimisation and cadence, its own steps (--tokenizer_steps, or the tokenizer's default budget),
    and no push (the model carries it). A resumed run resumes a stage one that has checkpoints and starts one that
    has none."""
    run, folder = args.run, Path(args.run.output_dir, "tokenizer")
    resume = run.resume_from_checkpoint and list_checkpoints(folder) and "latest"
    stage = dataclasses.replace(run, output_dir=str(folder), max_train_steps=args.image.tokenizer_steps,
                                num_epochs=None, resume_from_checkpoint=resume or None, push_to_hub=False,
                                hub_model_id=None)
    return TokenizerTrainingArguments(data=args.data, run=stage, tokenizer=args.tokenizer)


def two_stages(args: TrainingArguments, accelerator, started: float) -> dict:
    """`--tokenizer train`: stage one (skipped once its folder holds a finished tokenizer: a model and its card),
    then stage two on its tokens, in one accelerate run."""
    stage_one = tokenizer_stage(args)
    folder = Path(stage_one.run.output_dir)
    if not ((folder / "model.safetensors").is_file() and (folder / "README.md").is_file()):
        if accelerator.is_main_process:
            remove_partial_checkpoints(folder)
        TokenizerTrainer(stage_one, accelerator, started, stage="1/2").train(last_stage=False)
    elif accelerator.is_main_process:
        logger.info(f"Stage 1/2 is done ({folder.name}/ holds the trained tokenizer): going on with stage 2/2.")
    run = args.run
    if run.resume_from_checkpoint and not list_checkpoints(run.output_dir):  # stage two has not saved yet
        run = dataclasses.replace(run, resume_from_checkpoint=None)
    stage_two = dataclasses.replace(args, run=run, image=dataclasses.replace(args.image, tokenizer=str(folder)))
    return PixelGPTTrainer(stage_two, accelerator, started, stage="2/2", stage_one=folder).train()


def main(args: TrainingArguments) -> float:
    """Train a PixelGPT as `args` say (from `parse_args`), in two stages with `--tokenizer train`; returns the final
    held-out bits per token (or dim)."""
    if args.trains_tokenizer:
        figures = launch(args.run, lambda accelerator, started: two_stages(args, accelerator, started))
    else:
        figures = launch(args.run, lambda accelerator, started: PixelGPTTrainer(args, accelerator, started).train())
    return next(iter(figures.values()))
