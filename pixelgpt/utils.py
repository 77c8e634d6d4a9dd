"""Small helpers shared by the training script and the CLI: image files, image grids and the model card."""

import io
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A [PixelGPT](https://github.com/pixelgpt/pixelgpt) autoregressive image model: a decoder-only transformer that draws
{{ resolution }}x{{ resolution }} images token by token ({{ token_scheme }}), trained on {{ dataset_text }}.

![samples](samples.png)

## Use

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True)
images = model.generate_images(num_images=8{{ class_example }})  # list of PIL images
images[0].save("sample.png")
```

## Results

| metric | held-out value | untrained model |
|---|---|---|
| {{ bits_name }} | {{ bits }} | {{ untrained_bits }} |
{% if parallel_row %}{{ parallel_row }}
{% endif %}
{{ bits_note }}

## Training

| hyper-parameter | value |
|---|---|
{% for key, value in hyperparameters %}| {{ key }} | {{ value }} |
{% endfor %}
"""

class TrainingError(RuntimeError):
    """A training run that cannot start or go on (output folder, resume, divergence): the message says why and
    what to do; `pixelgpt train` prints it as one line."""


# Files taken as images in folders (train.py --train_data_dir, the pixelgpt command).
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_image(value, where: str) -> Image.Image:
    """Decode one image: a PIL image, a path, or a datasets value (dict with bytes/path). A file that cannot be
    read raises a ValueError naming it (or `where`)."""
    if isinstance(value, Image.Image):
        return value
    source = value.get("bytes") or value.get("path") if isinstance(value, dict) else value
    name = value.get("path") if isinstance(value, dict) and value.get("path") else where
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()  # force a full decode: truncated files fail here, not later in a worker
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"{name}: cannot read image ({type(err).__name__}: {err})") from err
    image.info["pixelgpt_name"] = name
    return image


# Hub id of the full dataset the built-in default is a subset of.
DEFAULT_DATASET_HUB_ID = "zalando-datasets/fashion_mnist"


def make_image_grid(images: list, cols: int = 8, pad: int = 1, background=(255, 255, 255)) -> Image.Image:
    """Tile equally sized PIL images row by row (`cols` per row) with `pad` pixels between them."""
    if not images:
        raise ValueError("make_image_grid needs at least one image.")
    w, h = images[0].size
    rows = -(-len(images) // cols)
    mode = "L" if all(i.mode == "L" for i in images) else "RGB"
    fill = background[0] if mode == "L" else tuple(background)
    grid = Image.new(mode, (cols * (w + pad) + pad, rows * (h + pad) + pad), fill)
    for i, image in enumerate(images):
        grid.paste(image.convert(mode), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


def write_model_card(folder, *, args, config, processor, dataset_name, metrics, bits_name, num_train_images):
    """Write README.md (YAML metadata + usage + results + hyper-parameters). Holds no token and no local path."""
    folder = Path(folder)
    repo_id = args.hub_model_id or folder.resolve().name
    is_default = dataset_name is not None and "built-in" in dataset_name
    hub_dataset = DEFAULT_DATASET_HUB_ID if is_default else dataset_name  # None for a local image folder
    if is_default:
        dataset_text = f"a {num_train_images}-image subset of Fashion-MNIST (MIT, Zalando SE), shipped with PixelGPT"
    elif dataset_name:
        dataset_text = f"{num_train_images} images of the `{dataset_name}` dataset"
    else:
        dataset_text = f"{num_train_images} images from local files"
    token_scheme = {"rgb8": "three lossless 8-bit tokens per pixel", "gray8": "one lossless 8-bit token per pixel",
                    "rgb": f"{processor.num_levels} levels per colour channel, one token per pixel",
                    "gray": f"{processor.num_levels} gray levels, one token per pixel",
                    "palette": f"a {processor.vocab_size}-colour k-means palette, one token per pixel",
                    }[processor.quantization]
    tokenizer = config.tokenizer_config
    if tokenizer is not None:
        token_scheme = (f"the codes ({tokenizer.codebook_size:,}) of a learned image tokenizer carried in the model, "
                        f"one token per {tokenizer.downsample_factor}x{tokenizer.downsample_factor} pixels "
                        f"({config.image_size}x{config.image_size} tokens)")
    bits = metrics[bits_name]
    untrained = metrics.get("untrained_" + bits_name)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="unconditional-image-generation",
        tags=["pixelgpt", "image-generation", "autoregressive", "custom_code"],
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=[bits_name],
        model_name=repo_id,
        eval_results=[EvalResult(task_type="unconditional-image-generation", dataset_type=hub_dataset or "imagefolder",
                                 dataset_name=hub_dataset or "local image folder", metric_type=bits_name,
                                 metric_name=f"held-out {bits_name.replace('_', ' ')}", metric_value=round(bits, 4))],
    )
    hyperparameters = [
        ("model size", f"{args.model_size} ({config.hidden_size} wide, {config.num_hidden_layers} layers, "
                       f"{config.num_attention_heads} heads)"),
        ("task", config.task + (f" (condition: {config.condition_size}x{config.condition_size} "
                                f"{processor.condition_quantization})" if config.is_conditional else "")),
        ("resolution", args.resolution),
        ("quantization", "image tokenizer" if tokenizer is not None else processor.quantization),
        ("vocabulary", config.vocab_size),
        ("class conditional", f"yes, class dropout {args.class_dropout_prob}" if config.num_classes else "no"),
        ("steps", metrics["steps"]), ("batch size per device", args.train_batch_size),
        ("gradient accumulation", args.gradient_accumulation_steps), ("learning rate", args.learning_rate),
        ("warm-up steps", args.lr_warmup_steps), ("schedule", "linear warm-up, cosine decay"),
        ("AdamW betas", f"({args.adam_beta1}, {args.adam_beta2})"), ("weight decay", args.weight_decay),
        ("gradient clipping", args.max_grad_norm), ("EMA", args.ema_decay if args.use_ema else "off"),
        ("mixed precision", args.mixed_precision or "accelerate default"), ("seed", args.seed),
        ("training time (s)", metrics.get("train_seconds")),
    ]
    k = config.parallel_tokens
    parallel_row = None
    if k > 1:
        hyperparameters.append(("parallel decoding", f"{k}-ahead prediction on {args.parallel_fraction:.0%} of steps"))
        parallel_row = (f"| {bits_name}, {k}-ahead (`generate_images(tokens_per_step={k})`: {k}x fewer passes) | "
                        f"{metrics[f'{bits_name}_{k}_ahead']:.4f} | |")
    card = ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        repo_id=repo_id,
        model_name=repo_id,
        resolution=config.pixel_size,
        token_scheme=token_scheme,
        dataset_text=dataset_text,
        class_example=", class_labels=[0]" if config.num_classes else "",
        bits_name=bits_name,
        bits=f"{bits:.4f}",
        untrained_bits="n/a (resumed run)" if untrained is None else f"{untrained:.4f}",
        bits_note=("Bits per dimension: mean negative log-likelihood over 8-bit sub-pixels, in bits (comparable with "
                   "published results)." if bits_name == "bits_per_dim" else
                   "Bits per token: mean negative log-likelihood of the quantized tokens, in bits; it depends on the "
                   "quantization and is not comparable with 8-bit bits/dim."),
        hyperparameters=hyperparameters,
        parallel_row=parallel_row,
    )
    card.save(folder / "README.md")
    return card
