"""PixelGPT image processor: images (PIL / numpy / torch, any common mode) <-> PixelGPT token ids.

Quantizations (the `quantization` field):
- `"rgb8"`: lossless, three tokens per pixel (R, G, B), 256 values each. Exact bits/dim.
- `"gray8"`: lossless 8-bit grayscale, one token per pixel, 256 values.
- `"rgb"`: `num_levels` evenly spaced levels per channel, one joint token per pixel (`num_levels**3` values).
- `"gray"`: `num_levels` evenly spaced gray levels, one token per pixel.
- `"palette"`: nearest colour of a palette learned with `fit_palette` (k-means, as iGPT), one token per pixel.

Every image becomes `image_size x image_size` pixels. Resize policy (`resize_mode`): `"crop"` scales the shorter
side to `image_size` and cuts the centre square (aspect ratio kept); `"stretch"` scales both sides to `image_size`.
An image already at that size is never resampled, so lossless modes round-trip exactly. Transparent images are
composited over `background` first.
"""


import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

QUANTIZATIONS = ("rgb8", "gray8", "rgb", "gray", "palette")
CONDITION_QUANTIZATIONS = ("gray8", "gray", "rgb")  # one token per pixel, no fitted palette
RESIZE_MODES = ("crop", "stretch")
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# PIL modes that carry 16 or 32-bit integer samples; their values are read as 16-bit (0..65535), as PNG stores them,
# except a 32-bit "I" image whose values all fit in 0..255, which holds 8-bit values (what `Image.fromarray` of an
# int32 array or some TIFF readers give); read as 16-bit it would come out black.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what}: float image holds {int((~np.isfinite(array)).sum())} NaN or infinite values; "
                             "float images must hold finite values in [0, 1].")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError(f"{what}: float images must hold values in [0, 1], got [{array.min()}, {array.max()}].")
        return np.round(array * 255.0).astype(np.uint8)
    raise ValueError(f"{what}: unsupported dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1].")


def _array_to_pil(array: np.ndarray, channels_first: bool, what: str) -> Image.Image:
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first and (channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise ValueError(f"{what}: cannot tell the channel axis of an array of shape {array.shape}; "
                             "use (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4.")
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D or 3-D image array, got shape {array.shape}.")
    if 0 in array.shape:
        raise ValueError(f"{what}: empty image of shape {array.shape}.")
    array = _to_uint8(array, what)
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[-1]]
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


class PixelGPTImageProcessor(BaseImageProcessor):
    r"""
    Turns images into PixelGPT token ids and token ids back into images.

    Args:
        quantization (`str`, defaults to `"rgb"`): one of `"rgb8"`, `"gray8"`, `"rgb"`, `"gray"`, `"palette"`.
        num_levels (`int`, defaults to 8): levels per channel for `"rgb"` (2..16) and `"gray"` (2..256).
        palette (`list[list[int]]`, *optional*): `(K, 3)` RGB colours in 0..255 for `"palette"` (2 <= K <= 4096);
            usually learned with `fit_palette`.
        image_size (`int`, defaults to 32): side of the square output, in pixels.
        resize_mode (`str`, defaults to `"crop"`): `"crop"` (keep aspect, centre crop) or `"stretch"`.
        resample (`str`, defaults to `"bicubic"`): PIL filter: nearest, box, bilinear, bicubic or lanczos.
        background (`list[int]`, defaults to white): RGB colour that transparent pixels are composited over.
        condition_quantization (`str`, *optional*): for conditional models (colorize / upscale / translate), how
            condition images are encoded: `"gray8"`, `"gray"` or `"rgb"` (one token per pixel). None: no condition.
        condition_num_levels (`int`, defaults to 8): levels per channel of a `"gray"` / `"rgb"` condition.
        condition_size (`int`, defaults to 0): side of the condition grid (same resize policy as the images).
    """

    model_input_names = ["input_ids"]

    def __init__(
        self,
        quantization: str = "rgb",
        num_levels: int = 8,
        palette=None,
        image_size: int = 32,
        resize_mode: str = "crop",
        resample: str = "bicubic",
        background=(255, 255, 255),
        condition_quantization: str | None = None,
        condition_num_levels: int = 8,
        condition_size: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.condition_quantization = condition_quantization
        self.condition_num_levels = condition_num_levels
        self.condition_size = condition_size
        self.quantization = quantization
        self.num_levels = num_levels
        self.palette = None if palette is None else np.asarray(palette).tolist()
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.resample = resample
        self.background = [int(c) for c in background]
        self._validate()

    def _validate(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {self.quantization!r}.")
        if self.quantization in ("rgb", "gray"):
            top = 16 if self.quantization == "rgb" else 256
            if not isinstance(self.num_levels, int) or not 2 <= self.num_levels <= top:
                raise ValueError(f"`num_levels` for {self.quantization!r} must be an int in [2, {top}], "
                                 f"got {self.num_levels!r}.")
        if self.quantization == "palette":
            if self.palette is None:
                raise ValueError("`quantization='palette'` needs a `palette`: pass one ((K, 3) RGB in 0..255) or "
                                 "learn it with `PixelGPTImageProcessor(quantization='palette', palette=...)`"
                                 " / `fit_palette(images, num_colors)`.")
            pal = np.asarray(self.palette)
            if pal.ndim != 2 or pal.shape[1] != 3 or not 2 <= len(pal) <= 4096:
                raise ValueError(f"`palette` must have shape (K, 3) with 2 <= K <= 4096, got {pal.shape}.")
            if pal.min() < 0 or pal.max() > 255:
                raise ValueError("`palette` colours must be in 0..255.")
        if not isinstance(self.image_size, int) or not 1 <= self.image_size <= 256:
            raise ValueError(f"`image_size` must be an int in [1, 256], got {self.image_size!r}.")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {RESIZE_MODES}, got {self.resize_mode!r}.")
        if self.resample not in RESAMPLE:
            raise ValueError(f"`resample` must be one of {tuple(RESAMPLE)}, got {self.resample!r}.")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"`background` must be three ints in 0..255, got {self.background!r}.")
        if self.condition_quantization is None:
            if self.condition_size:
                raise ValueError("`condition_size` needs a `condition_quantization` (gray8, gray or rgb).")
        elif self.condition_quantization not in CONDITION_QUANTIZATIONS:
            raise ValueError(f"`condition_quantization` must be one of {CONDITION_QUANTIZATIONS} or None, got "
                             f"{self.condition_quantization!r}.")
        else:
            _ = self.condition_processor  # validates the condition settings

    @property
    def condition_processor(self) -> "PixelGPTImageProcessor | None":
        """The processor that encodes condition images (same resize policy and background), or None."""
        if self.condition_quantization is None:
            return None
        return PixelGPTImageProcessor(quantization=self.condition_quantization, num_levels=self.condition_num_levels,
                                      image_size=self.condition_size, resize_mode=self.resize_mode,
                                      resample=self.resample, background=self.background)

    @property
    def condition_vocab_size(self) -> int:
        """Distinct condition tokens (0 without a condition)."""
        return 0 if self.condition_quantization is None else self.condition_processor.vocab_size

    # ------------------------------------------------------------------ properties the model checks against
    @property
    def num_channels(self) -> int:
        """Channels of decoded images: 1 for gray modes, 3 otherwise."""
        return 1 if self.quantization in ("gray", "gray8") else 3

    @property
    def tokens_per_pixel(self) -> int:
        return 3 if self.quantization == "rgb8" else 1

    @property
    def vocab_size(self) -> int:
        """Number of distinct image tokens; the model config's `vocab_size` must equal it."""
        return {"rgb8": 256, "gray8": 256, "rgb": self.num_levels**3, "gray": self.num_levels,
                "palette": len(self.palette or ())}[self.quantization]

    @property
    def num_image_tokens(self) -> int:
        return self.image_size * self.image_size * self.tokens_per_pixel

    @property
    def bits_per_token_is_bits_per_dim(self) -> bool:
        """True when each token is one 8-bit sub-pixel, so the model's bits per token are bits/dim as published."""
        return self.quantization in ("rgb8", "gray8")

    # ------------------------------------------------------------------ image -> uint8 array
    def _to_pil(self, image, what: str) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, torch.Tensor):
            return _array_to_pil(image.detach().cpu().numpy(), channels_first=True, what=what)
        if isinstance(image, np.ndarray):
            return _array_to_pil(image, channels_first=False, what=what)
        raise TypeError(f"{what}: expected a PIL.Image, numpy array or torch tensor, got {type(image).__name__}.")

    def _normalize_mode(self, image: Image.Image, what: str) -> Image.Image:
        """Any PIL mode -> "L" or "RGB" (as this processor needs), compositing transparency over `background`."""
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{what}: empty image ({image.width}x{image.height}).")
        mode = image.mode
        if mode in WIDE_MODES:
            values = np.asarray(image, dtype=np.float64)
            eight_bit = mode == "I" and values.size and values.min() >= 0 and values.max() <= 255
            image = _array_to_pil(values.astype(np.uint8) if eight_bit else values.clip(0, 65535).astype(np.uint16),
                                  channels_first=False, what=what)
        elif mode == "F":
            image = _array_to_pil(np.asarray(image, dtype=np.float32), channels_first=False, what=what)
        elif mode == "P" and "transparency" in image.info or mode in ("PA", "LA", "La", "RGBa"):
            image = image.convert("RGBA")
        if image.mode == "RGBA":
            canvas = Image.new("RGB", image.size, tuple(self.background))
            canvas.paste(image, mask=image.getchannel("A"))
            image = canvas
        target = "L" if self.num_channels == 1 else "RGB"
        try:
            return image.convert(target)
        except (ValueError, OSError) as err:
            raise ValueError(f"{what}: cannot convert PIL mode {image.mode!r} to {target!r}: {err}") from err

    def _resize(self, image: Image.Image) -> Image.Image:
        size = self.image_size
        if image.size == (size, size):
            return image
        resample = RESAMPLE[self.resample]
        if self.resize_mode == "stretch":
            return image.resize((size, size), resample)
        scale = size / min(image.size)
        new_w, new_h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((new_w, new_h), resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return image.crop((left, top, left + size, top + size))

    def to_array(self, images) -> np.ndarray:
        """Images -> `(B, H, W, C)` uint8 array after mode conversion and resizing (what gets quantized)."""
        images = self._as_list(images)
        arrays = []
        for i, image in enumerate(images):
            what = f"image {i}"
            pil = self._resize(self._normalize_mode(self._to_pil(image, what), what))
            arrays.append(np.asarray(pil, dtype=np.uint8).reshape(self.image_size, self.image_size, -1))
        return np.stack(arrays)

    @staticmethod
    def _as_list(images) -> list:
        """One image, a 4-D batch array/tensor, or any sequence of images (list, tuple, a datasets column...)."""
        if isinstance(images, (np.ndarray, torch.Tensor)):
            if images.ndim == 4 and len(images) == 0:
                raise ValueError(f"Got an empty batch of images (shape {tuple(images.shape)}).")
            return list(images) if images.ndim == 4 else [images]
        if isinstance(images, Image.Image) or not hasattr(images, "__iter__") or isinstance(images, (str, bytes)):
            return [images]
        images = list(images)
        if not images:
            raise ValueError("Got an empty list of images.")
        return images

    # ------------------------------------------------------------------ uint8 array <-> tokens
    def _palette_array(self) -> np.ndarray:
        return np.asarray(self.palette, dtype=np.float32)

    def quantize(self, pixels: np.ndarray) -> np.ndarray:
        """`(B, H, W, C)` uint8 -> `(B, num_image_tokens)` int64 token ids."""
        batch = pixels.shape[0]
        q = self.quantization
        if q in ("rgb8", "gray8"):
            return pixels.reshape(batch, -1).astype(np.int64)
        if q in ("rgb", "gray"):
            n = self.num_levels
            levels = np.round(pixels.astype(np.float32) * (n - 1) / 255.0).astype(np.int64)  # nearest level
            if q == "gray":
                return levels.reshape(batch, -1)
            return ((levels[..., 0] * n + levels[..., 1]) * n + levels[..., 2]).reshape(batch, -1)
        flat = torch.from_numpy(pixels.reshape(-1, 3).astype(np.float32))
        return _nearest(flat, torch.from_numpy(self._palette_array())).numpy().reshape(batch, -1)

    def dequantize(self, tokens: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
        """`(B, num_image_tokens)` token ids -> `(B, H, W, C)` uint8 pixels (`height` x `width` for a canvas of
        another size, e.g. from outpainting; default `image_size` square)."""
        batch = tokens.shape[0]
        q = self.quantization
        if q in ("rgb8", "gray8"):
            pixels = tokens.astype(np.uint8)
        elif q in ("rgb", "gray"):
            n = self.num_levels
            if q == "rgb":
                tokens = np.stack([tokens // (n * n), tokens // n % n, tokens % n], axis=-1)
            pixels = np.round(tokens * 255.0 / (n - 1)).astype(np.uint8)
        else:
            pixels = np.asarray(self.palette, dtype=np.uint8)[tokens]
        return pixels.reshape(batch, height or self.image_size, width or self.image_size, self.num_channels)

    # ------------------------------------------------------------------ public API
    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Encode one image or a batch into `input_ids` of shape `(B, 1 + num_image_tokens)`.

        The first column is the unconditional start token (`vocab_size`); replace it with a class token for
        class-conditional training. Images: PIL (any mode), numpy `(H, W)`, `(H, W, C)` or `(B, H, W, C)` (uint8,
        uint16, or float in [0, 1]), torch `(C, H, W)` or `(B, C, H, W)`.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)}; processor settings are fixed at construction.")
        tokens = self.quantize(self.to_array(images))
        start = np.full((tokens.shape[0], 1), self.vocab_size, dtype=np.int64)
        input_ids = np.concatenate([start, tokens], axis=1)
        return BatchFeature(data={"input_ids": input_ids}, tensor_type=return_tensors)

    def decode(self, input_ids, output_type: str = "pil"):
        """Token ids `(B, N)` or `(B, 1 + N)` (with the start token) -> list of PIL images (or a uint8 array with
        `output_type="np"`). Palette tokens decode to their palette colour; lossless modes invert `preprocess`."""
        if output_type not in ("pil", "np"):
            raise ValueError(f"`output_type` must be 'pil' or 'np', got {output_type!r}.")
        ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        n = self.num_image_tokens
        if ids.ndim != 2 or ids.shape[1] not in (n, n + 1):
            raise ValueError(f"Expected token ids of shape (B, {n}) or (B, {n + 1}) for {self.image_size}x"
                             f"{self.image_size} images with {self.tokens_per_pixel} token(s) per pixel, got "
                             f"shape {tuple(ids.shape)}.")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"Token ids must be integers, got dtype {ids.dtype}.")
        ids = ids[:, -n:]
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"Image token ids must be in [0, {self.vocab_size}) for this processor, got values in "
                             f"[{ids.min()}, {ids.max()}].")
        pixels = self.dequantize(ids)
        return pixels if output_type == "np" else self.to_pil(pixels)

    @staticmethod
    def to_pil(pixels: np.ndarray) -> list:
        """`(B, H, W, C)` uint8 -> list of PIL images ("L" for one channel, else "RGB")."""
        return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p, mode="L" if p.shape[-1] == 1 else "RGB")
                for p in pixels]

    def encode_condition(self, images, return_tensors: str | None = "pt") -> BatchFeature:
        """Condition images -> `condition_ids` `(B, condition_size**2)` with the condition settings (read as
        grayscale for gray conditions, resized to `condition_size` as `resize_mode` says)."""
        if self.condition_quantization is None:
            raise ValueError("This processor has no condition settings (`condition_quantization` is None); it "
                             "belongs to a model that takes no condition image.")
        sub = self.condition_processor
        return BatchFeature(data={"condition_ids": sub.quantize(sub.to_array(images))}, tensor_type=return_tensors)

    def prepare_mask(self, mask, images) -> np.ndarray:
        """Inpainting masks -> `(B, image_size, image_size)` bool, True where pixels are redrawn.

        `mask`: one mask for every image or a list with one per image; PIL ("1", "L", ... : white = redraw),
        or a bool / 0-1 (or 0-255) array. Each must be `image_size` square, or the size of its image, which is then
        resized (nearest) and cropped as the image is."""
        images = self._as_list(images)
        stacked = isinstance(mask, (np.ndarray, torch.Tensor)) and mask.ndim == 3 and mask.shape[-1] != 1
        masks = list(mask) if stacked else self._as_list(mask)
        if len(masks) == 1:
            masks = masks * len(images)
        if len(masks) != len(images):
            raise ValueError(f"Give one mask for all images or one per image: {len(images)} images, "
                             f"{len(masks)} masks.")
        # Masks at an image's own size are resized (nearest, so they stay binary) and cropped as the image is.
        nearest = PixelGPTImageProcessor(quantization="gray8", image_size=self.image_size,
                                         resize_mode=self.resize_mode, resample="nearest")
        out = []
        for i, (m, image) in enumerate(zip(masks, images)):
            what = f"mask {i}"
            array = np.asarray(m.convert("L") if isinstance(m, Image.Image) else
                               (m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m))
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim != 2:
                raise ValueError(f"{what}: expected a 2-D mask (H, W), got shape {array.shape}.")
            values = np.unique(array)
            if array.dtype != bool and not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
                raise ValueError(f"{what}: masks must be binary (bool, 0/1 or 0/255; white/1 = redraw), got values "
                                 f"{values[:8].tolist()}{'...' if len(values) > 8 else ''}.")
            binary = array.astype(bool)
            grid = (self.image_size, self.image_size)
            if binary.shape != grid:
                size = self._to_pil(image, f"image {i}").size[::-1]  # (H, W)
                if binary.shape != size:
                    raise ValueError(f"{what}: size {binary.shape[1]}x{binary.shape[0]} matches neither the model "
                                     f"grid {grid[1]}x{grid[0]} nor its image ({size[1]}x{size[0]}).")
                binary = nearest.to_array(Image.fromarray(binary.astype(np.uint8) * 255))[0, ..., 0] > 127
            out.append(binary)
        return np.stack(out)

    def fit_palette(self, images, num_colors: int = 256, max_pixels: int = 200_000, num_iters: int = 30,
                    seed: int = 0):
        """Learn a `num_colors` palette with k-means (k-means++ start) on pixels of `images`; switches this
        processor to `quantization="palette"` and returns it. If the images hold no more than `num_colors`
        distinct colours, the palette is exactly those colours (lossless)."""
        if not isinstance(num_colors, int) or not 2 <= num_colors <= 4096:
            raise ValueError(f"`num_colors` must be an int in [2, 4096], got {num_colors!r}.")
        saved = self.quantization
        self.quantization = "rgb8"  # read pixels as RGB whatever the current mode
        try:
            pixels = self.to_array(images).reshape(-1, 3)
        finally:
            self.quantization = saved
        generator = torch.Generator().manual_seed(seed)
        if len(pixels) > max_pixels:
            pixels = pixels[torch.randperm(len(pixels), generator=generator)[:max_pixels].numpy()]
        unique = np.unique(pixels, axis=0)
        if len(unique) <= num_colors:
            palette = unique if len(unique) >= 2 else np.concatenate([unique, 255 - unique])
        else:
            palette = _kmeans(torch.from_numpy(pixels.astype(np.float32)), num_colors, num_iters, generator)
        self.quantization = "palette"
        self.palette = np.clip(np.round(np.asarray(palette)), 0, 255).astype(int).tolist()
        self._validate()
        return self

    def to_dict(self):
        output = super().to_dict()
        for key in ("palette",):
            if isinstance(output.get(key), np.ndarray):
                output[key] = output[key].tolist()
        return output


def _nearest(points: torch.Tensor, centers: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centre (squared Euclidean) for each point, in chunks to bound memory."""
    out = torch.empty(len(points), dtype=torch.long)
    c2 = (centers * centers).sum(1)
    for i in range(0, len(points), chunk):
        p = points[i : i + chunk]
        out[i : i + chunk] = (c2[None, :] - 2 * p @ centers.T).argmin(1)  # |p|^2 is constant per row
    return out


def _kmeans(points: torch.Tensor, k: int, num_iters: int, generator: torch.Generator) -> np.ndarray:
    # k-means++ seeding: each new centre drawn with probability proportional to squared distance.
    centers = points[torch.randint(len(points), (1,), generator=generator)]
    dist = ((points - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        idx = torch.multinomial(dist / dist.sum(), 1, generator=generator) if dist.sum() > 0 else \
            torch.randint(len(points), (1,), generator=generator)
        centers = torch.cat([centers, points[idx]])
        dist = torch.minimum(dist, ((points - points[idx]) ** 2).sum(1))
    for _ in range(num_iters):
        assign = _nearest(points, centers)
        sums = torch.zeros_like(centers).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        new = sums / counts.clamp(min=1)[:, None]
        new[empty] = points[torch.randint(len(points), (int(empty.sum()),), generator=generator)]
        if torch.allclose(new, centers):
            break
        centers = new
    return centers.numpy()


PixelGPTImageProcessor.register_for_auto_class("AutoImageProcessor")

# The processor and the settings it accepts (the command line offers the same choices).
__all__ = ["CONDITION_QUANTIZATIONS", "PixelGPTImageProcessor", "QUANTIZATIONS", "RESAMPLE", "RESIZE_MODES"]
