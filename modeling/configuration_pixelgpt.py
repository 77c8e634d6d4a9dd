"""PixelGPT model configuration."""

import operator

from transformers import PreTrainedConfig

from .configuration_pixelgpt_vqvae import PixelGPTVQVAEConfig

# Named size presets (as DiT's): the training script offers these as `--model_size` choices, and any field can
# still be overridden one by one. Widths are multiples of 4 * heads so the 2-D rotary split is exact.
PIXELGPT_PRESETS = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4},
    "small": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8},
    "base": {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8},
}

# Class tokens are embedding rows: a label id in the billions is a data error, not a class count.
MAX_CLASSES = 100_000

# What a model can be trained for (`train.py --task`); the last three read a condition image first.
PIXELGPT_TASKS = ("generate", "inpaint", "colorize", "upscale", "translate")
CONDITIONAL_TASKS = ("colorize", "upscale", "translate")
# How an inpainting model orders the pixels it draws last (`inpaint_fill_order`).
FILL_ORDERS = ("random", "raster", "raster_both")

# The one table of which image operation a model of each task can do: the model's `<operation>_images` methods,
# `pipeline()` and the `pixelgpt` command all ask `config.check_operation`.
OPERATIONS = {
    "generate": ("generate", "inpaint"),
    "complete": ("generate", "inpaint"),
    "inpaint": ("inpaint",),
    "outpaint": ("inpaint",),
    "vary": ("inpaint",),
    "colorize": ("colorize",),
    "upscale": ("upscale",),
    "translate": ("translate", "colorize", "upscale"),
}
# What `pipeline("image-to-image")` does with a model of each task when no operation is named (and no mask given).
DEFAULT_OPERATION = {"generate": "complete", "inpaint": "vary", "colorize": "colorize", "upscale": "upscale",
                     "translate": "translate"}


def _check(ok, message):
    if not ok:
        raise ValueError(message)


class PixelGPTConfig(PreTrainedConfig):
    r"""
    Configuration of a PixelGPT model: a decoder-only transformer over the token sequence of a square image (raster
    order, or any order for inpainting models), with 2-D rotary positions.

    A sequence is `[prompt tokens] + [condition tokens] + [start] + image tokens` (prompt tokens only for text
    models, condition tokens only for the conditional tasks).
    The start token is `start_token_id` (= `vocab_size`) for unconditional images or
    `class_token_id(c)` for class `c`. Image tokens take values in `[0, vocab_size)`; each pixel is
    `tokens_per_pixel` tokens (3 for lossless `rgb8`, 1 otherwise), so an image is
    `image_size * image_size * tokens_per_pixel` tokens.

    Args:
        vocab_size (`int`, defaults to 512):
            Number of distinct image tokens (the image processor's `vocab_size`: palette size, 256 for 8-bit
            modes, `num_levels` or `num_levels**3` for the cheap modes). At least 2.
        image_size (`int`, defaults to 32):
            Side of the square grid the model draws, in cells (1 to 256), each cell `tokens_per_pixel` tokens: the
            images' side in pixels for a model on the image processor's tokens, the tokenizer's grid side for a
            model on a learned tokenizer (`tokenizer_config`), whose images are `pixel_size` =
            `image_size * downsample_factor` pixels wide.
        tokens_per_pixel (`int`, defaults to 1):
            Tokens per pixel: 1, or 3 for per-sub-pixel `rgb8` tokens (R, G, B of a pixel in a row).
        num_classes (`int`, defaults to 0):
            Number of class-conditioning start tokens (0 = unconditional model only).
        hidden_size (`int`, defaults to 256):
            Width of the residual stream. Must be a multiple of `4 * num_attention_heads` (2-D rotary embedding
            splits each head in a row half and a column half of rotation pairs).
        intermediate_size (`int`, *optional*):
            Width of the SwiGLU MLP. Defaults to 8/3 of `hidden_size`, rounded up to a multiple of 32.
        num_hidden_layers (`int`, defaults to 8):
            Number of decoder layers, at least 1.
        num_attention_heads (`int`, defaults to 8):
            Number of attention heads; must divide `hidden_size`.
        rope_theta (`float`, defaults to 100.0):
            Base of the rotary frequencies. Image grids are short (tens of rows), so a small base keeps the
            slowest frequency useful.
        rms_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the RMSNorm layers.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on attention probabilities during training, in [0, 1).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal weight initialisation.
        tie_word_embeddings (`bool`, defaults to `False`):
            Share the image-token embedding with the output head.
        use_cache (`bool`, defaults to `True`):
            Return key/value caches for fast generation.
        parallel_tokens (`int`, defaults to 1):
            k of k-ahead training (set by `train.py --parallel_tokens`): the model can also draw k tokens per
            forward pass (`generate_images(tokens_per_step=k)`). 1 = one token per pass only. 1 to 64.
        task (`str`, defaults to `"generate"`):
            What the model was trained for (`train.py --task`), one of `PIXELGPT_TASKS`:
            `"generate"`: raster order (generation, completion, parallel decoding);
            `"inpaint"`: random generation orders (also inpainting, outpainting, variations, completion);
            `"colorize"`, `"upscale"`, `"translate"`: raster order after a condition image's tokens (grayscale
            version, low-resolution version, or a paired source image).
        condition_size (`int`, defaults to 0):
            Side of the condition image's token grid (conditional tasks only, 1 to 256). Condition pixels are placed
            on the target grid by scaling, so a low-resolution condition lines up with the pixels it covers.
        condition_patch_size (`int`, defaults to 1):
            Conditional tasks: each condition row reads a `condition_patch_size`-square block of condition pixels
            (`condition_size` a multiple of it). On a tokenizer's grid, `condition_size` = the image's side in
            pixels and this = the tokenizer's factor give every token the full-resolution condition under its
            cell, at one condition row per token (1: one condition pixel per row).
        condition_vocab_size (`int`, defaults to 0):
            Distinct condition tokens (the image processor's `condition_vocab_size`; conditional tasks only).
        aligned_condition (`bool`, defaults to `False`):
            Conditional tasks: every image row also adds the embedding of the condition at the pixel it predicts
            (the pixel's own gray value or source pixel; for a smaller condition grid, the low-resolution pixels
            around it, bilinearly weighted), so no row has to find its condition pixel through attention.
            `train.py` turns it on; models saved before it existed load with it off and behave as they did.
        condition_prefix (`bool`, defaults to `True`):
            Conditional tasks: the condition tokens also come first in the sequence, where attention reads them.
            At least one of `condition_prefix` and `aligned_condition` must be on.
        class_embedding (`bool`, defaults to `False`):
            Class-conditional models: a class embedding (the unconditional start token has one too, for guidance)
            is added to every row, not only read once from the start token. Needs `num_classes` > 0.
        inpaint_fill_order (`str`, defaults to `"random"`):
            Task "inpaint": the order in which the pixels left for last (training rectangles, inpainting holes,
            scored pixels) are drawn: `"random"`; `"raster"` (known pixels in random order, then the hole row by
            row, which learns and scores better at the same budget); or `"raster_both"` (known pixels row by row
            too, skipping the hole, then the hole row by row: the first part is then the raster task itself).
        text_vocab_size (`int`, defaults to 0):
            Text models (`train.py --text_conditional`): the size of the prompt tokenizer's vocabulary; 0 for a model
            without prompts. A text model reads `max_text_length` prompt tokens (padded with `text_pad_token_id`)
            before everything else, and adds the mean of the prompt's word embeddings to every row.
        max_text_length (`int`, defaults to 16):
            Text models: prompt tokens per sequence (1 to 256); longer prompts are refused by the processor.
        text_pad_token_id (`int`, defaults to 0):
            Text models: the padding token; an all-padding prompt is the empty prompt (unconditional).
        tokenizer_config (`PixelGPTVQVAEConfig` or `dict`, *optional*):
            The image tokenizer the model works on (`train.py --tokenizer`), carried inside the model as Janus
            carries its VQ model: tokens are then the tokenizer's codes on a grid `downsample_factor` times smaller
            per side than the pixels (`image_size` is that grid's side, `pixel_size` the images'), and
            `vocab_size` is its codebook size. None: one token per pixel (or sub-pixel) from the image processor.
            Condition images of the conditional tasks stay pixel grids (the processor's condition settings), placed
            on the token grid by scaling as always.
    """

    model_type = "pixelgpt"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 512
    image_size: int = 32
    tokens_per_pixel: int = 1
    num_classes: int = 0
    hidden_size: int = 256
    intermediate_size: int | None = None
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    rope_theta: int | float = 100.0
    rms_norm_eps: int | float = 1e-5
    attention_dropout: int | float = 0.0
    initializer_range: int | float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    parallel_tokens: int = 1
    task: str = "generate"
    condition_size: int = 0
    condition_patch_size: int = 1
    condition_vocab_size: int = 0
    aligned_condition: bool = False
    condition_prefix: bool = True
    class_embedding: bool = False
    inpaint_fill_order: str = "random"
    text_vocab_size: int = 0
    max_text_length: int = 16
    text_pad_token_id: int = 0
    tokenizer_config: dict | PixelGPTVQVAEConfig | None = None

    def __post_init__(self, **kwargs):
        tokenizer = self.tokenizer_config
        if isinstance(tokenizer, PreTrainedConfig) and not isinstance(tokenizer, PixelGPTVQVAEConfig):
            tokenizer = tokenizer.to_dict()  # the same class loaded from another module (remote code)
        if isinstance(tokenizer, dict):  # as read from config.json
            self.tokenizer_config = PixelGPTVQVAEConfig(**tokenizer)
        self.validate_architecture()  # before the derived defaults are computed from possibly bad values
        # Derived defaults, all in one place.
        if self.intermediate_size is None:
            self.intermediate_size = 32 * -(-8 * self.hidden_size // (3 * 32))
        for derived in ("head_dim", "num_key_value_heads", "max_position_embeddings"):
            kwargs.pop(derived, None)  # properties below, never taken from a saved file
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # `from_pretrained(path, hidden_size=...)` sets overrides as attributes after construction, where
        # `__post_init__` checks nothing: check the result as a whole here (it also runs at `save_pretrained`).
        config = super().from_dict(config_dict, **kwargs)
        (config[0] if isinstance(config, tuple) else config).validate_architecture()
        return config

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.validate_architecture()  # a field set by hand since construction must not reach a saved file
        return super().save_pretrained(save_directory, *args, **kwargs)

    def validate_architecture(self):
        """Every rule a working PixelGPT needs, raising ValueError with the accepted range. It runs at
        construction, after `from_pretrained(..., field=value)` overrides and at `save_pretrained` (transformers
        names its own architecture checks the same; its `@strict` type errors are not ValueErrors, so PixelGPT
        checks types here too)."""

        check = _check
        for name in ("vocab_size", "image_size", "tokens_per_pixel", "num_classes", "hidden_size",
                     "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool), f"`{name}` must be an int, got {value!r}.")
        check(self.vocab_size >= 2, f"`vocab_size` must be at least 2, got {self.vocab_size}.")
        check(1 <= self.image_size <= 256, f"`image_size` must be in [1, 256], got {self.image_size}.")
        check(self.tokens_per_pixel in (1, 3), f"`tokens_per_pixel` must be 1 or 3, got {self.tokens_per_pixel}.")
        check(self.num_classes >= 0, f"`num_classes` must be >= 0, got {self.num_classes}.")
        check(self.num_classes <= MAX_CLASSES, f"`num_classes` must be at most {MAX_CLASSES} (one start-token "
              f"embedding each), got {self.num_classes}.")
        check(self.num_hidden_layers >= 1, f"`num_hidden_layers` must be >= 1, got {self.num_hidden_layers}.")
        check(self.num_attention_heads >= 1, f"`num_attention_heads` must be >= 1, got {self.num_attention_heads}.")
        check(
            self.hidden_size % (4 * self.num_attention_heads) == 0,
            f"`hidden_size` ({self.hidden_size}) must be a multiple of 4 * num_attention_heads "
            f"({4 * self.num_attention_heads}): each head is split into row and column rotary halves of even size.",
        )
        check(self.intermediate_size is None or self.intermediate_size >= 1,
              f"`intermediate_size` must be >= 1 or None, got {self.intermediate_size}.")
        check(self.rope_theta > 1.0, f"`rope_theta` must be > 1, got {self.rope_theta}.")
        check(0.0 <= self.attention_dropout < 1.0,
              f"`attention_dropout` must be in [0, 1), got {self.attention_dropout}.")
        check(self.rms_norm_eps > 0, f"`rms_norm_eps` must be > 0, got {self.rms_norm_eps}.")
        check(self.initializer_range > 0, f"`initializer_range` must be > 0, got {self.initializer_range}.")
        check(isinstance(self.parallel_tokens, int) and 1 <= self.parallel_tokens <= 64,
              f"`parallel_tokens` must be an int in [1, 64], got {self.parallel_tokens!r}.")
        check(self.task in PIXELGPT_TASKS, f"`task` must be one of {PIXELGPT_TASKS}, got {self.task!r}.")
        for name in ("aligned_condition", "condition_prefix", "class_embedding"):
            value = getattr(self, name)
            check(isinstance(value, bool), f"`{name}` must be True or False, got {value!r}.")
        self.validate_condition()
        check(not self.class_embedding or self.num_classes > 0,
              "`class_embedding` needs a class-conditional model (`num_classes` > 0).")
        for name in ("text_vocab_size", "max_text_length", "text_pad_token_id"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool), f"`{name}` must be an int, got {value!r}.")
        check(self.text_vocab_size == 0 or self.text_vocab_size >= 2,
              f"`text_vocab_size` must be 0 (no prompts) or at least 2, got {self.text_vocab_size}.")
        check(1 <= self.max_text_length <= 256, f"`max_text_length` must be in [1, 256], got {self.max_text_length}.")
        check(self.text_vocab_size == 0 or 0 <= self.text_pad_token_id < self.text_vocab_size,
              f"`text_pad_token_id` must be in [0, {self.text_vocab_size}), got {self.text_pad_token_id}.")
        check(self.inpaint_fill_order in FILL_ORDERS,
              f"`inpaint_fill_order` must be one of {FILL_ORDERS}, got {self.inpaint_fill_order!r}.")
        check(self.parallel_tokens == 1 or self.task == "generate",
              f"`parallel_tokens` > 1 (k-ahead decoding) needs task 'generate', got task {self.task!r}.")
        tokenizer = self.tokenizer_config
        if tokenizer is not None:
            check(isinstance(tokenizer, PixelGPTVQVAEConfig),
                  f"`tokenizer_config` must be a PixelGPTVQVAEConfig or a dict of one, got {type(tokenizer)}.")
            check(self.vocab_size == tokenizer.codebook_size,
                  f"`vocab_size` ({self.vocab_size}) must equal the tokenizer's codebook size "
                  f"({tokenizer.codebook_size}).")
            check(self.tokens_per_pixel == 1, "a model on an image tokenizer's grid reads one token per grid cell: "
                  f"`tokens_per_pixel` must be 1, got {self.tokens_per_pixel}.")

    def validate_condition(self):
        """The rules of the condition image's fields (`validate_architecture`)."""
        check = _check
        if self.is_conditional:
            check(isinstance(self.condition_size, int) and 1 <= self.condition_size <= 256,
                  f"task {self.task!r} needs `condition_size` in [1, 256], got {self.condition_size!r}.")
            check(isinstance(self.condition_vocab_size, int) and self.condition_vocab_size >= 2,
                  f"task {self.task!r} needs `condition_vocab_size` >= 2, got {self.condition_vocab_size!r}.")
            check(isinstance(self.condition_patch_size, int) and self.condition_patch_size >= 1
                  and self.condition_size % self.condition_patch_size == 0,
                  f"`condition_patch_size` must be an int >= 1 that divides `condition_size` "
                  f"({self.condition_size}), got {self.condition_patch_size!r}.")
            check(self.aligned_condition or self.condition_prefix,
                  "a conditional model needs `condition_prefix` or `aligned_condition` (or both): with neither it "
                  "never reads its condition image.")
        else:
            check(self.condition_patch_size == 1, f"`condition_patch_size` is for the conditional tasks "
                  f"{CONDITIONAL_TASKS}; task {self.task!r} takes 1.")
            check(self.condition_size == 0 and self.condition_vocab_size == 0,
                  f"`condition_size` / `condition_vocab_size` are for the conditional tasks {CONDITIONAL_TASKS}; "
                  f"task {self.task!r} takes 0 for both.")
            check(not self.aligned_condition, f"`aligned_condition` is for the conditional tasks {CONDITIONAL_TASKS}; "
                  f"task {self.task!r} has no condition image.")

    # Purely derived sizes are properties, so they stay right when a field is changed after construction
    # (`from_pretrained(path, image_size=...)` sets attributes after `__post_init__`).
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        """Read by transformers' cache classes; PixelGPT uses full multi-head attention."""
        return self.num_attention_heads

    @property
    def max_position_embeddings(self) -> int:
        """Every position a sequence can have: condition tokens, the start token and every image token."""
        return self.num_prefix_tokens + 1 + self.num_image_tokens

    @property
    def pixel_size(self) -> int:
        """Side of the images in pixels: `image_size` times the tokenizer's downsampling factor (if any)."""
        factor = self.tokenizer_config.downsample_factor if self.tokenizer_config is not None else 1
        return self.image_size * factor

    @property
    def num_prefix_tokens(self) -> int:
        """Rows placed before the start token: the prompt's (`num_text_tokens`), then the condition's
        (`num_condition_rows` with `condition_prefix`)."""
        return self.num_text_tokens + (self.num_condition_rows if self.condition_prefix else 0)

    @property
    def num_text_tokens(self) -> int:
        """Prompt tokens of a text model (`max_text_length`), 0 for a model without prompts."""
        return self.max_text_length if self.is_text_conditional else 0

    @property
    def is_text_conditional(self) -> bool:
        """Whether the model reads a prompt (`text_vocab_size` > 0)."""
        return self.text_vocab_size > 0

    @property
    def num_condition_tokens(self) -> int:
        """Tokens of the condition image (one per pixel): `condition_size**2`, 0 for unconditioned tasks."""
        return self.condition_size * self.condition_size

    @property
    def condition_grid_size(self) -> int:
        """Side of the grid of condition rows: `condition_size // condition_patch_size`."""
        return self.condition_size // self.condition_patch_size

    @property
    def num_condition_rows(self) -> int:
        """Rows the condition image takes before the start token (with `condition_prefix`): one per patch."""
        return self.condition_grid_size**2

    @property
    def is_conditional(self) -> bool:
        """Whether sequences begin with a condition image's tokens."""
        return self.task in CONDITIONAL_TASKS

    @property
    def start_token_id(self) -> int:
        """The unconditional start token (also the "null class" for classifier-free guidance)."""
        return self.vocab_size

    @property
    def num_image_tokens(self) -> int:
        """Tokens in one image: `image_size**2 * tokens_per_pixel`."""
        return self.image_size * self.image_size * self.tokens_per_pixel

    @property
    def num_start_tokens(self) -> int:
        """Start-token ids after the image tokens: one unconditional (`start_token_id`) plus one per class."""
        return 1 + self.num_classes

    def check_operation(self, operation: str) -> None:
        """Raise a ValueError unless a model of this task can do `operation` (a key of `OPERATIONS`)."""
        if operation not in OPERATIONS:
            raise ValueError(f"Unknown operation {operation!r}; PixelGPT models do {tuple(OPERATIONS)}.")
        tasks = OPERATIONS[operation]
        if self.task not in tasks:
            flags = " or ".join(f"--task {t}" for t in tasks)
            raise ValueError(f"`{operation}` needs a model trained for {' or '.join(map(repr, tasks))}; this one was "
                             f"trained for task {self.task!r}. Train one with `pixelgpt train {flags}`.")

    @property
    def operations(self) -> tuple[str, ...]:
        """The operations a model of this task can do, in `OPERATIONS` order."""
        return tuple(op for op, tasks in OPERATIONS.items() if self.task in tasks)

    def class_token_id(self, label: int) -> int:
        """The start-token id that conditions on class `label` (an integer: 1.7 or "3" is refused, not rounded)."""
        try:
            if isinstance(label, bool):
                raise TypeError
            label = operator.index(label)
        except TypeError:
            raise ValueError(f"class labels must be integers, got {label!r}.") from None
        if not 0 <= label < self.num_classes:
            raise ValueError(f"class label {label} is out of range: this model has {self.num_classes} classes "
                             f"(labels 0..{self.num_classes - 1}).")
        return self.vocab_size + 1 + label


# save_pretrained writes `auto_map` and copies this file, so the config loads with trust_remote_code=True.
PixelGPTConfig.register_for_auto_class()

__all__ = ["CONDITIONAL_TASKS", "DEFAULT_OPERATION", "FILL_ORDERS", "MAX_CLASSES", "OPERATIONS", "PIXELGPT_PRESETS",
           "PIXELGPT_TASKS", "PixelGPTConfig"]
