"""The image-level methods of `PixelGPTForImageGeneration`, a mixin as transformers' `GenerationMixin` is:
images in, PIL images out. Each method turns its inputs into known tokens (-1 where a token is to be drawn),
start tokens and condition tokens; `_sample_batches` batches and seeds them and calls the loop in
`sampling_pixelgpt`; the processor decodes the result. Which model task allows which method is `OPERATIONS` in
the config file.

Inpainting end to end, in three files read in this order: `layouts_pixelgpt.py` (any-order rows: each row is told
which pixel it predicts; training orders leave a random rectangle last), `sampling_pixelgpt.py` (`sample_tokens`
reads the known pixels in one pass, then draws the others in the given order), and here: `inpaint_images` marks
the masked tokens unknown, `_sample_batches` draws a random order per image with the known pixels first and calls
the loop.
"""

import math

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .layouts_pixelgpt import last_tokens_order, task_inputs
from .modeling_pixelgpt_vqvae import PixelGPTVQVAE
from .sampling_pixelgpt import (
    SamplingOptions,
    check_count,
    exact_sample_tokens,
    generate_reference,
    leading_known,
    packed_weights,
)
from .sampling_pixelgpt import sample_tokens as sampling_loop


class PixelGPTImageTasksMixin:
    """`generate_images`, `complete_images`, `inpaint_images`, `outpaint_images`, `vary_images`,
    `colorize_images`, `upscale_images`, `translate_images`, `score_images`, `encode_images` and `decode_tokens`
    (images to the model's token ids and back), and `sample_tokens` (the loop on token ids, last in this class).

    Every sampling method takes the keyword arguments of `SamplingOptions` (`temperature`, `top_k`, `top_p`,
    `guidance_scale`, `tokens_per_step`, `exact`, `generator`, `batch_size`, `show_progress`, `use_generate`,
    `output_type`), plus `image_processor=` (default: `model.image_processor` or the one saved beside the model).
    Text models also take `prompt=` (one for all, or one per output image of `generate_images` / per input image of
    the others) and `negative_prompt=` (what guidance steers away from instead of the empty prompt); their
    `image_processor=` may be the `PixelGPTProcessor`, which holds the prompt tokenizer.
    """

    image_processor = None  # set by the user, or loaded on first use from the model's `name_or_path`
    processor = None  # text models: the PixelGPTProcessor (image processor + prompt tokenizer), likewise

    def get_image_processor(self, image_processor=None):
        """The processor that encodes inputs and decodes tokens: the one given, `self.image_processor`, or the one
        saved beside the model (loaded once). Raises if its token scheme does not match the model."""
        if hasattr(image_processor, "tokenizer"):  # a PixelGPTProcessor: its image processor and prompt tokenizer
            self.processor, image_processor = image_processor, image_processor.image_processor
        processor = image_processor or self.image_processor
        if processor is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError(
                    "No image processor to turn tokens into images: pass `image_processor=` (a "
                    "PixelGPTImageProcessor) or set `model.image_processor`, or load the model with from_pretrained "
                    "from a folder/repo that holds a preprocessor_config.json."
                )
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=True)
            self.image_processor = processor
        if self.config.tokenizer_config is not None:  # the processor only resizes; the tokenizer makes the tokens
            names = ("quantization", "image_size", "condition_vocab_size", "condition_size")
            expected = ("rgb8", self.config.pixel_size, self.config.condition_vocab_size, self.config.condition_size)
        else:
            names = ("vocab_size", "tokens_per_pixel", "image_size", "condition_vocab_size", "condition_size")
            expected = tuple(getattr(self.config, name) for name in names)
        found = tuple(getattr(processor, name) for name in names)
        if found != expected:
            raise ValueError(f"Image processor does not match the model: {names} is {found} for the processor and "
                             f"{expected} for the model.")
        return processor

    def get_prompt_processor(self, processor=None):
        """The `PixelGPTProcessor` whose tokenizer reads prompts: the one given, `self.processor`, or the one saved
        beside the model (loaded once)."""
        if hasattr(processor, "tokenizer"):
            self.processor = processor
        if self.processor is None:
            if not self.config.name_or_path:
                raise ValueError("No prompt tokenizer: pass `image_processor=` a PixelGPTProcessor (image processor "
                                 "and tokenizer) or set `model.processor`, or load the model with from_pretrained.")
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.config.name_or_path, trust_remote_code=True)
        return self.processor

    def _prompt_ids(self, sampling: dict, count: int, repeats: int, image_processor=None):
        """Take `prompt` / `negative_prompt` out of `sampling`: each a string (for all `count` inputs) or a list of
        `count`, as `(count * repeats, max_text_length)` ids (None where not given)."""
        prompts = {name: sampling.pop(name, None) for name in ("prompt", "negative_prompt")}
        if all(p is None for p in prompts.values()):
            return None, None
        if not self.config.is_text_conditional:
            raise ValueError("This model was trained without text prompts: `prompt` / `negative_prompt` need a text "
                             "model (train one with --text_conditional).")
        processor, out = self.get_prompt_processor(image_processor), []
        for name, value in prompts.items():
            if value is None:
                out.append(None)
                continue
            value = [value] * count if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or len(value) != count:
                raise ValueError(f"`{name}` must be a string or a list of {count} strings (one per input), got "
                                 f"{value!r}.")
            ids = torch.from_numpy(processor.encode_prompts(list(value)))
            out.append(ids.repeat_interleave(repeats, dim=0).to(self.device))
        return tuple(out)

    # ------------------------------------------------------------------------------------------ public methods
    @torch.no_grad()
    def generate_images(self, num_images: int = 1, class_labels: int | list[int] | None = None, image_processor=None,
                        prompt: str | list[str] | None = None, **sampling):
        """Sample new images: `num_images` (per class label or prompt, when given a list), decoded to PIL.

        `class_labels`: a class id or a list of ids for a class-conditional model (None draws unconditionally);
        `prompt`: a prompt or a list of prompts for a text model ("" draws unconditionally); `guidance_scale` > 1
        guides towards them (classifier-free guidance, the model trained with class or prompt dropout).
        `tokens_per_step=k` uses a model trained with `parallel_tokens=k`: with `exact=True`, exact speculative
        sampling (the same distribution as one token per pass, in fewer passes); without, approximate k-ahead
        decoding (k tokens per pass, at a measured cost in quality). `output_type="tokens"` returns the ids
        `(num_images, 1 + N)`. Other keywords: see `SamplingOptions` (extra keywords go to `generate()` with
        `use_generate=True`).
        """
        check_count("num_images", num_images)
        if self.config.is_conditional:
            raise ValueError(f"This model draws from a condition image (task {self.config.task!r}); use "
                             f"`{self.config.task}_images(images)`.")
        self.config.check_operation("generate")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompts is not None and not (isinstance(prompts, (list, tuple)) and prompts):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}.")
        if prompts is not None and class_labels is not None:
            raise ValueError("Give `class_labels` or `prompt`, not both.")
        if prompts is not None:
            sampling["prompt"] = prompts
        text = self._prompt_ids(sampling, len(prompts) if prompts is not None else 1, num_images, image_processor)
        options = SamplingOptions.from_kwargs(sampling)
        processor = self.get_image_processor(image_processor) if options.output_type == "pil" else None
        start_ids = self._start_ids(class_labels, num_images * (len(prompts) if prompts else 1))
        tokens = self._sample_batches(start_ids, options, class_labels=class_labels, text=text)
        return self._output(tokens, processor, options)

    @torch.no_grad()
    def complete_images(self, images, keep_rows: int, num_completions: int = 1, class_labels=None,
                        image_processor=None, **sampling):
        """Keep the top `keep_rows` pixel rows of each image and sample the rest, `num_completions` times each.

        `images` are anything the image processor takes (one image or a batch); the output holds
        `len(images) * num_completions` images, the completions of the first input first. The kept rows come back
        exactly as the processor quantized them (pixel for pixel the input in lossless modes). `class_labels`: one
        per input, for class-conditional models. Raster models see only the rows above what they draw; inpainting
        models (task "inpaint") draw the rest in their fill order (`config.inpaint_fill_order`).
        """
        self.config.check_operation("complete")
        processor = self.get_image_processor(image_processor)
        height = self.config.pixel_size
        if not isinstance(keep_rows, int) or isinstance(keep_rows, bool) or not 0 <= keep_rows <= height:
            raise ValueError(f"`keep_rows` must be an int in [0, {height}] (the image height), got {keep_rows!r}.")
        check_count("num_completions", num_completions)
        known = self._encode(images, processor, num_completions)  # (B * num_completions, N)
        # On a tokenizer's grid a token row covers `factor` pixel rows: one only partly kept is redrawn, and the
        # kept pixel rows are put back exactly afterwards.
        token_rows = keep_rows * self.config.image_size // height
        known[:, token_rows * self.config.image_size * self.config.tokens_per_pixel :] = -1
        redraw = torch.zeros(len(known), height, height, dtype=torch.bool)
        redraw[:, keep_rows:] = True
        return self._edit(known, num_completions, class_labels, processor, sampling,
                          paste=self._paste(images, processor, redraw, num_completions))

    @torch.no_grad()
    def inpaint_images(self, images, mask_image, num_samples: int = 1, class_labels=None, image_processor=None,
                       **sampling):
        """Redraw the masked pixels of each image, `num_samples` times each, using the pixels on every side.

        `mask_image`: one mask for all images or one per image: PIL (white = redraw, black = keep, as diffusers),
        or a boolean/0-1 array, at the model's grid size or at the image's own size (then resized and cropped as
        the image). Pixels outside the mask come back as the processor quantized them. Needs a model trained with
        `--task inpaint`: it reads every kept pixel first, then draws the masked ones in its fill order (raster
        for models trained since `inpaint_fill_order` exists, random before).
        """
        self.config.check_operation("inpaint")
        processor = self.get_image_processor(image_processor)
        check_count("num_samples", num_samples)
        known = self._encode(images, processor)  # (B, N)
        masks = torch.from_numpy(processor.prepare_mask(mask_image, images))  # (B, H, W) True = redraw
        known = known.masked_fill(self._token_mask(masks), -1)
        known = known.repeat_interleave(num_samples, dim=0)  # (B * num_samples, N)
        masks = masks.repeat_interleave(num_samples, dim=0)
        return self._edit(known, num_samples, class_labels, processor, sampling,
                          paste=self._paste(images, processor, masks, num_samples))

    @torch.no_grad()
    def vary_images(self, images, strength: float = 0.5, num_variations: int = 1, class_labels=None,
                    image_processor=None, **sampling):
        """Variations: keep a random `1 - strength` share of each image's pixels and redraw the rest with an
        inpainting model. `strength` 0 returns the image itself, 1 draws a new image; the kept pixels hold the
        coarse structure. A fresh set of pixels is redrawn for each of the `num_variations` (the `generator` also
        picks them)."""
        self.config.check_operation("vary")
        processor = self.get_image_processor(image_processor)
        if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}.")
        check_count("num_variations", num_variations)
        known = self._encode(images, processor, num_variations)  # (B * num_variations, N)
        size = self.config.image_size
        draws = torch.rand(len(known), size * size, generator=sampling.get("generator"))
        redraw = draws.argsort(dim=1).argsort(dim=1) < round(strength * size * size)  # exactly that many pixels
        # Drawn on the model's grid: pixels, or tokenizer cells.
        known = known.masked_fill(redraw.repeat_interleave(self.config.tokens_per_pixel, dim=1), -1)
        return self._edit(known, num_variations, class_labels, processor, sampling)

    @torch.no_grad()
    def outpaint_images(self, images, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
                        class_labels=None, image_processor=None, **sampling):
        """Extend each image beyond its borders by the given numbers of pixels (on the model's grid), with an
        inpainting model.

        The canvas may be larger than the training resolution: it is filled by `image_size`-square windows that
        step outwards from the image by half a window, each redrawing its empty pixels from everything already
        there. Every pass thus stays inside the grid the model was trained on (2-D rotary positions would accept a
        larger grid, but offsets beyond `image_size` were never trained); the price is that a window sees only the
        last `image_size` pixels, not the whole canvas. Returns PIL images of size
        `(pixel_size + left + right) x (pixel_size + top + bottom)`; `batch_size` applies per window. With
        `output_type="tokens"` the canvas's tokens `(B, height * width * tokens_per_pixel)`, without a start
        column (it is no single sequence the model read). On a tokenizer's grid the margins are drawn in whole
        tokens (rounded up, the surplus cropped) and the input's pixels come back exactly.
        """
        self.config.check_operation("outpaint")
        processor = self.get_image_processor(image_processor)
        size, t, pixels = self.config.image_size, self.config.tokens_per_pixel, self.config.pixel_size
        margins = {"left": left, "right": right, "top": top, "bottom": bottom}
        for name, value in margins.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4 * pixels:
                raise ValueError(f"`{name}` must be an int in [0, {4 * pixels}] (pixels to add), got {value!r}.")
        factor = pixels // size
        left, right, top, bottom = (-(-value // factor) for value in margins.values())  # in grid cells
        tokens = self._encode(images, processor)  # (B, N)
        batch, height, width = len(tokens), size + top + bottom, size + left + right
        canvas = torch.full((batch, height, width, t), -1, dtype=torch.long)
        canvas[:, top : top + size, left : left + size] = tokens.view(batch, size, size, t)
        start_ids = self._input_start_ids(class_labels, batch, 1)
        text = self._prompt_ids(sampling, batch, 1, image_processor)
        options = SamplingOptions.from_kwargs(sampling)

        def steps(origin, low_end):  # window corners from the image outwards, half a window at a time
            corners = {origin}
            for direction, stop in ((-1, 0), (1, low_end)):
                corner = origin
                while corner != stop:
                    corner = max(0, corner - size // 2) if direction < 0 else min(stop, corner + size // 2)
                    corners.add(corner)
            return corners

        windows = sorted(((y, x) for y in steps(top, height - size) for x in steps(left, width - size)),
                         key=lambda yx: (abs(yx[0] - top) + abs(yx[1] - left), yx))
        for y, x in windows:
            window = canvas[:, y : y + size, x : x + size]  # (B, S, S, t) view
            if (window >= 0).all():
                continue
            filled = self._sample_batches(start_ids, options, window.reshape(batch, -1), class_labels=class_labels,
                                          text=text)
            window.copy_(filled[:, 1:].view(batch, size, size, t))
        if options.output_type == "tokens":
            return canvas.flatten(1)
        if self.image_tokenizer is None:
            return processor.to_pil(processor.dequantize(canvas.flatten(1).numpy(), height=height, width=width))
        out = self._decode_grid(canvas[..., 0])  # (B, height * factor, width * factor, 3)
        y, x = top * factor, left * factor  # where the input lies; the margins asked for start before it
        out[:, y : y + pixels, x : x + pixels] = self._pixels(images, processor)
        rows = slice(y - margins["top"], y + pixels + margins["bottom"])
        out = out[:, rows, x - margins["left"] : x + pixels + margins["right"]]
        return processor.to_pil(out.numpy())

    @torch.no_grad()
    def translate_images(self, images, num_samples: int = 1, image_processor=None, **sampling):
        """Draw target images from condition images, `num_samples` per input, with a conditional model: a paired
        translation model (`--task translate`: source -> target), a colorization model (grayscale in) or an
        upscaling model (low resolution in). `images` are encoded by the processor's condition settings."""
        return self._conditional("translate", images, num_samples, image_processor, sampling)

    @torch.no_grad()
    def colorize_images(self, images, num_samples: int = 1, keep_luminance: bool = True, image_processor=None,
                        **sampling):
        """Colour versions of (grayscale) images, `num_samples` per input, from a model trained with
        `--task colorize`: colour images are read as grayscale first, so any image works as input.

        `keep_luminance=True` keeps the input's own gray values as the luminance (Y of YCbCr) and takes only the
        colour (Cb, Cr) from the model, so no detail of the input is lost to the model's colour quantization (as
        colorization methods that predict chroma only; where a colour at that luminance is outside the RGB gamut,
        it is clipped)."""
        colour = self._conditional("colorize", images, num_samples, image_processor, sampling)
        if not keep_luminance or sampling.get("output_type", "pil") != "pil":
            return colour
        processor = self.get_image_processor(image_processor)
        gray = type(processor)(quantization="gray8", image_size=self.config.pixel_size,
                               resize_mode=processor.resize_mode, resample=processor.resample,
                               background=processor.background).to_array(images)[..., 0]  # (B, S, S)
        out = []
        for i, image in enumerate(colour):
            _, cb, cr = image.convert("YCbCr").split()
            out.append(Image.merge("YCbCr", (Image.fromarray(gray[i // num_samples]), cb, cr)).convert("RGB"))
        return out

    @torch.no_grad()
    def upscale_images(self, images, num_samples: int = 1, image_processor=None, **sampling):
        """Super-resolution: `image_size`-square images from low-resolution inputs (resized to the model's
        `condition_size` first), `num_samples` per input, with a model trained with `--task upscale`."""
        return self._conditional("upscale", images, num_samples, image_processor, sampling)

    @torch.no_grad()
    def score_images(self, images, mask_image=None, condition_images=None, class_labels=None,
                     generator: torch.Generator | None = None, batch_size: int = 16,
                     image_processor=None) -> torch.Tensor:
        """Negative log-likelihood of each image under the model, in bits per token: `(B,)` float tensor.

        With `mask_image` (as in `inpaint_images`) only the masked pixels are scored: an inpainting model reads
        every other pixel first (in an order drawn from `generator`), a raster model only the pixels before each
        one in raster order. Conditional models score images given `condition_images` (for colorize / upscale
        models, the images themselves by default: their grayscale / low-resolution version). Rows are laid out as
        in training (`layouts_pixelgpt.task_inputs`)."""
        processor = self.get_image_processor(image_processor)
        check_count("batch_size", batch_size)
        ids = self.encode_images(images, processor)  # (B, 1 + N)
        if class_labels is not None:
            ids[:, 0] = torch.tensor(self._input_start_ids(class_labels, len(ids), 1))
        scored = torch.ones(len(ids), self.config.pixel_size, self.config.pixel_size, dtype=torch.bool)
        if mask_image is not None:
            scored = torch.from_numpy(processor.prepare_mask(mask_image, images))
        empty = [i for i, image_mask in enumerate(scored) if not image_mask.any()]
        if empty:
            raise ValueError(f"`mask_image` selects no pixel to score in image(s) {empty}: white marks the pixels "
                             "to score.")
        scored = self._token_mask(scored)  # (B, N)
        condition = None
        if self.config.is_conditional:
            if condition_images is None and self.config.task == "translate":
                raise ValueError("A translation model scores targets given their sources: pass `condition_images`.")
            source = images if condition_images is None else condition_images
            condition = processor.encode_condition(source, return_tensors="pt").condition_ids
            if len(condition) != len(ids):
                raise ValueError(f"Give one condition image per image: {len(ids)} images, {len(condition)} "
                                 "condition images.")
        elif condition_images is not None:
            raise ValueError(f"`condition_images` are for conditional models; this one's task is {self.config.task!r}.")
        bits = []
        for i in range(0, len(ids), batch_size):
            inputs = task_inputs(self.config, ids[i : i + batch_size].to(self.device), generator=generator,
                                 scored=scored[i : i + batch_size].to(self.device))
            labels = inputs.pop("labels")
            cond = None if condition is None else condition[i : i + batch_size].to(self.device)
            logits = self(**inputs, condition_ids=cond, use_cache=False).logits  # (b, N, V)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view_as(labels)
            count = (labels != -100).sum(1).clamp(min=1)
            bits.append((nll.sum(1) / count / math.log(2)).cpu())
        return torch.cat(bits)

    def encode_images(self, images, image_processor=None) -> torch.LongTensor:
        """The token ids the model reads for `images` (anything the image processor takes): `(B, 1 + N)` long
        tensor, the unconditional start token (`config.start_token_id`; put `config.class_token_id(c)` in column 0
        for class c) then the image tokens in raster order: the processor's own (its `input_ids`), or, for a model
        on a learned tokenizer, the tokenizer's codes of the processor's 8-bit RGB pixels."""
        tokens = self._encode(images, self.get_image_processor(image_processor))  # (B, N)
        return torch.cat([torch.full((len(tokens), 1), self.config.start_token_id), tokens], dim=1)

    def decode_tokens(self, token_ids: torch.LongTensor, image_processor=None) -> list:
        """Token ids `(B, N)` or `(B, 1 + N)` (what `encode_images` and `output_type="tokens"` return) -> a list of
        PIL images: the processor's dequantized pixels, or the tokenizer's decoding for a model on a learned
        tokenizer. `decode_tokens(encode_images(x))` is `x` as the model sees it (the processor's quantization,
        or the tokenizer's reconstruction)."""
        processor = self.get_image_processor(image_processor)
        if self.image_tokenizer is None:
            return processor.decode(token_ids)
        return processor.to_pil(self._token_pixels(torch.as_tensor(token_ids)).numpy())

    # ------------------------------------------------------------------------------------------ inputs and batching
    def _start_ids(self, class_labels, repeats: int) -> list[int]:
        """One start token per output image: unconditional, or each class label `repeats` times."""
        if class_labels is None:
            return [self.config.start_token_id] * repeats
        return [self.config.class_token_id(c) for c in self._labels(class_labels) for _ in range(repeats)]

    @staticmethod
    def _labels(class_labels) -> list:
        """One class label or a sequence of them, as a list."""
        return [class_labels] if not hasattr(class_labels, "__iter__") else list(class_labels)

    def _input_start_ids(self, class_labels, num_inputs: int, repeats: int) -> list[int]:
        """Start tokens for `num_inputs` input images drawn `repeats` times each: one class label per input."""
        if class_labels is None:
            return [self.config.start_token_id] * (num_inputs * repeats)
        labels = self._labels(class_labels)
        if len(labels) != num_inputs:
            raise ValueError(f"Give one class label per input image: {num_inputs} images, {len(labels)} labels.")
        return self._start_ids(labels, repeats)

    # Encoding and decoding: the processor's tokens, or (`config.tokenizer_config`) the image tokenizer's codes of
    # the processor's 8-bit RGB pixels. The tokenizer runs in chunks so a large batch never holds every activation.
    _TOKENIZER_CHUNK = 64

    @staticmethod
    def _pixels(images, processor) -> torch.Tensor:
        """The processor's uint8 pixels of `images`: `(B, H, W, C)`."""
        return torch.from_numpy(processor.to_array(images))

    def _encode(self, images, processor, repeats: int = 1) -> torch.LongTensor:
        """Tokens of `images`, each repeated `repeats` times: `(B * repeats, N)`."""
        if self.image_tokenizer is None:
            tokens = processor(images, return_tensors="pt").input_ids[:, 1:]
        else:
            pixels = PixelGPTVQVAE.to_pixel_values(self._pixels(images, processor))  # (B, 3, H, W)
            tokens = torch.cat([self.image_tokenizer.encode(chunk).flatten(1).cpu()  # (b, h * w)
                                for chunk in pixels.split(self._TOKENIZER_CHUNK)])
        return tokens.repeat_interleave(repeats, dim=0)

    def _decode_grid(self, grid: torch.LongTensor) -> torch.Tensor:
        """Tokenizer codes `(B, h, w)` -> uint8 pixels `(B, h * factor, w * factor, C)`."""
        return torch.cat([PixelGPTVQVAE.to_uint8(self.image_tokenizer.decode(chunk)).cpu()
                          for chunk in grid.split(self._TOKENIZER_CHUNK)])

    def _token_mask(self, pixel_mask: torch.BoolTensor) -> torch.BoolTensor:
        """`(B, H, W)` pixel mask -> `(B, N)` token mask: every sub-pixel token of a masked pixel, or every
        tokenizer cell that covers a masked pixel."""
        if self.image_tokenizer is not None:
            factor = self.config.pixel_size // self.config.image_size
            return F.max_pool2d(pixel_mask[:, None].float(), factor).flatten(1).bool()  # (B, h * w)
        return pixel_mask.flatten(1).repeat_interleave(self.config.tokens_per_pixel, dim=1)

    def _paste(self, images, processor, redraw: torch.BoolTensor, repeats: int):
        """For tokenizer models: the input pixels and `(B * repeats, H, W)` redraw mask, so that `_output` puts
        every pixel outside the mask back exactly (the tokenizer only approximates them). None otherwise."""
        if self.image_tokenizer is None:
            return None
        return self._pixels(images, processor).repeat_interleave(repeats, dim=0), redraw

    def _edit(self, known, repeats, class_labels, processor, sampling, paste=None):
        """Fill the unknown (-1) tokens of `known` `(B * repeats, N)`: completion, inpainting, variations."""
        start_ids = self._input_start_ids(class_labels, len(known) // repeats, repeats)
        text = self._prompt_ids(sampling, len(known) // repeats, repeats, processor)
        options = SamplingOptions.from_kwargs(sampling)
        tokens = self._sample_batches(start_ids, options, known, class_labels=class_labels, text=text)
        return self._output(tokens, processor, options, paste)

    def _conditional(self, operation, images, num_samples, image_processor, sampling):
        self.config.check_operation(operation)
        processor = self.get_image_processor(image_processor)
        check_count("num_samples", num_samples)
        condition = processor.encode_condition(images, return_tensors="pt").condition_ids
        text = self._prompt_ids(sampling, len(condition), num_samples, image_processor)
        condition = condition.repeat_interleave(num_samples, dim=0)  # (B * num_samples, C)
        options = SamplingOptions.from_kwargs(sampling)
        tokens = self._sample_batches([self.config.start_token_id] * len(condition), options, condition_ids=condition,
                                      text=text)
        return self._output(tokens, processor, options)

    def _token_pixels(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Tokenizer codes `(B, N)` or `(B, 1 + N)` -> uint8 pixels `(B, H, W, 3)` (the tokenizer checks the ids)."""
        n, size = self.config.num_image_tokens, self.config.image_size
        if token_ids.dim() != 2 or token_ids.shape[1] not in (n, n + 1):
            raise ValueError(f"Expected token ids of shape (B, {n}) or (B, {n + 1}) for this model's {size}x{size} "
                             f"token grid, got shape {tuple(token_ids.shape)}.")
        return self._decode_grid(token_ids[:, -n:].reshape(len(token_ids), size, size))

    def _output(self, tokens, processor, options: SamplingOptions, paste=None):
        """`(B, 1 + N)` sampled ids -> PIL images (or the ids, for `output_type="tokens"`)."""
        if options.output_type == "tokens":
            return tokens
        if paste is None:
            return self.decode_tokens(tokens, processor)
        original, redraw = paste
        return processor.to_pil(torch.where(redraw[..., None], self._token_pixels(tokens), original).numpy())

    def _sample_batches(self, start_ids: list[int], options: SamplingOptions, known: torch.LongTensor | None = None,
                        condition_ids: torch.LongTensor | None = None, class_labels=None,
                        text=(None, None)) -> torch.LongTensor:
        """Check `options`, then sample `len(start_ids)` images `(B, 1 + N)` in batches of `options.batch_size`.
        `known` `(B, N)`: tokens to keep (-1: draw). `text`: the prompt and negative prompt ids `(B, L)` of text
        models (or None). Any-order models draw their order (known pixels first) from the seeded generator."""
        text_ids, negative_ids = text
        if text_ids is None and negative_ids is not None:  # only a negative prompt: steer from it, prompt empty
            text_ids = torch.full_like(negative_ids, self.config.text_pad_token_id)
        options.check(self.config, class_labels, prompt=text_ids)
        device, n = self.device, self.config.num_image_tokens
        seed = None if options.generator is None else int(torch.randint(0, 2**62, (1,), generator=options.generator))
        start_ids = torch.tensor(start_ids, device=device)
        if known is None:
            known = torch.full((len(start_ids), n), -1, dtype=torch.long)
        if options.use_generate and leading_known(known) != int((known >= 0).sum(1).max()):
            raise ValueError("`use_generate=True` continues a raster prefix only; keep whole top rows.")
        bar = tqdm(total=int((known < 0).sum()), desc="Sampling", unit="tok", disable=not options.show_progress)
        outputs = []
        # Both paths draw from torch's global generator: fork it so that a `generator` gives reproducible images
        # without disturbing the caller's global random state.
        # Weights are packed once for every batch of the call (the loops inside find them packed).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), packed_weights(self):
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(0, len(start_ids), options.batch_size):
                start = start_ids[i : i + options.batch_size]
                part = known[i : i + options.batch_size].to(device)
                condition = None if condition_ids is None else condition_ids[i : i + options.batch_size].to(device)
                prompt, negative = (t if t is None else t[i : i + options.batch_size] for t in (text_ids, negative_ids))
                if options.use_generate:
                    prefix = part[:, : leading_known(part)]
                    out = generate_reference(self, start, prefix if prefix.shape[1] else None, options, bar)
                elif options.exact and options.tokens_per_step > 1:
                    out = exact_sample_tokens(self, start, options, known=part, progress=bar)
                else:
                    order = None
                    if self.config.task == "inpaint":  # known pixels first, the rest in the fill order
                        order = last_tokens_order(part < 0, self.config.tokens_per_pixel,
                                                  fill_order=self.config.inpaint_fill_order)
                    out = sampling_loop(self, start, options, known=part, order=order, condition_ids=condition,
                                        progress=bar, text_ids=prompt, negative_text_ids=negative)
                outputs.append(out.cpu())  # (b, 1 + N)
        bar.close()
        return torch.cat(outputs)

    @torch.no_grad()
    def sample_tokens(self, start_ids: torch.LongTensor, tokens_per_step: int = 1, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, progress=None,
                      prefix: torch.LongTensor | None = None, guidance_scale: float = 1.0,
                      known: torch.LongTensor | None = None, order: torch.LongTensor | None = None,
                      condition_ids: torch.LongTensor | None = None) -> torch.LongTensor:
        """PixelGPT's own sampling loop (static KV cache, one forward pass per `tokens_per_step` tokens) on token
        ids, drawing from torch's global RNG: `(B,)` start tokens in, `(B, 1 + N)` ids out.

        `prefix` `(B, P)`: known first image tokens (raster order); `known` `(B, N)`: tokens to keep, -1 where one
        is drawn; `order` `(B, N)`: the generation order of any-order models (known tokens first);
        `condition_ids` `(B, condition_size**2)`: the condition image of conditional models. See
        `sampling_pixelgpt.sample_tokens`. The arguments are checked as the image methods' are (a ValueError
        names the first one this model cannot sample with); `start_ids` must be this model's start or class
        token ids."""
        options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale,
                                  tokens_per_step=tokens_per_step)
        options.check(self.config, class_labels=start_ids)  # guidance steers towards the class tokens of start_ids
        low, high = self.config.start_token_id, self.config.start_token_id + self.config.num_start_tokens
        if not isinstance(start_ids, torch.Tensor) or start_ids.dim() != 1:
            raise ValueError(f"`start_ids` must be a (B,) LongTensor of start or class token ids, got a "
                             f"{type(start_ids).__name__} of shape {tuple(getattr(start_ids, 'shape', ()))}.")
        outside = start_ids[(start_ids < low) | (start_ids >= high)]
        if len(outside):
            raise ValueError(f"`start_ids` must be start or class token ids, in [{low}, {high}) for this model "
                             f"(start_token_id, then class_token_id(c)), got {outside.unique().tolist()}.")
        if prefix is not None:
            if known is None:
                known = torch.full((len(start_ids), self.config.num_image_tokens), -1, dtype=torch.long,
                                   device=start_ids.device)
            known = known.clone()
            known[:, : prefix.shape[1]] = prefix
        return sampling_loop(self, start_ids, options, known, order, condition_ids, progress)


__all__ = ["PixelGPTImageTasksMixin"]
