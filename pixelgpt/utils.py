"""Small helpers shared by the training script and the CLI: image files, image grids, PSNR and the model card."""

import hashlib
import importlib.metadata
import io
import re
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image

# The card links only to addresses that exist: the project's own address comes from the installed package's metadata
# (setup.cfg `url` / `project_urls`) and is left out while that has none.
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A {% if project_url %}[PixelGPT]({{ project_url }}){% else %}PixelGPT{% endif %} autoregressive image model: a \
decoder-only transformer that draws {{ resolution }}x{{ resolution }} images token by token ({{ token_scheme }}), \
trained on {{ dataset_text }}.
{% if grid %}
![samples]({{ grid }})

{{ grid_note }}
{% endif %}
## Use

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True){{ repo_note }}
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


def image_key(value) -> str:
    """What identifies an undecoded image (a datasets value): its file's path, else a sha1 digest of its bytes."""
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        if value.get("bytes"):
            return hashlib.sha1(value["bytes"]).hexdigest()
    return repr(value)


def open_image(value, where: str) -> Image.Image:
    """Decode one image: a PIL image, a path, or a datasets value (dict with bytes/path). A file that cannot be
    read raises a ValueError naming it (or `where`)."""
    if isinstance(value, Image.Image):
        return value
    source = value.get("bytes") or value.get("path") if isinstance(value, dict) else value
    name = value.get("path") if isinstance(value, dict) and value.get("path") else where
    if isinstance(source, bytes) and name == where:  # no file name (parquet, Hub data): name it by its content
        name = f"{where} without a file name (sha1 {image_key(value)[:12]})"
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()  # force a full decode: truncated files fail here, not later in a worker
    except Exception as err:  # PIL raises many types for broken files
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "its bytes", str(err))  # no memory address
        raise ValueError(f"{name}: cannot read image ({type(err).__name__}: {detail})") from err
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


# The narrowest a grid is shown on a model card: a 28x28 grid of 8 columns is 233 pixels wide, too small to see.
CARD_GRID_MIN_WIDTH = 512


def enlarge_nearest(image: Image.Image, min_size: int = CARD_GRID_MIN_WIDTH, longer_side: bool = False) -> Image.Image:
    """`image` scaled up by the smallest whole factor that makes its width (with `longer_side`: its longer side) at
    least `min_size` pixels, with nearest neighbour: each pixel becomes a factor x factor block of the same value,
    nothing is blurred or invented."""
    factor = max(1, -(-min_size // (max(image.size) if longer_side else image.width)))
    if factor == 1:
        return image.copy()
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


# Identical images have no finite PSNR: the mean squared error is floored at this, so that they score 100 dB.
PSNR_MIN_MSE = 255.0**2 * 1e-10


def psnr(a, b):
    """Per-image PSNR in dB (peak 255) of `(B, H, W, C)` images on the 0-255 scale: uint8, or floats such as a mean
    of samples. Torch tensors give a float32 tensor (what training gathers across processes), numpy arrays a float64
    array (average it for a mean over images); capped at 100 dB (see PSNR_MIN_MSE)."""
    torch_inputs = isinstance(a, torch.Tensor)
    xp = torch if torch_inputs else np
    a, b = (a.float(), b.float()) if torch_inputs else (np.asarray(a, np.float64), np.asarray(b, np.float64))
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * xp.log10(255.0**2 / mse.clip(min=PSNR_MIN_MSE))


def save_card_grid(folder, name: str, min_width: int = CARD_GRID_MIN_WIDTH) -> tuple[str, str] | None:
    """Save the enlarged copy of `folder/name` that a card shows, as `<stem>_large.png` beside it (the original
    keeps its pixel size). Returns the new file's name and a sentence for the card saying how it was enlarged, or
    None when `folder/name` does not exist."""
    source = Path(folder) / name
    if not source.is_file():
        return None
    target = source.with_name(f"{source.stem}_large.png")
    with Image.open(source) as image:
        large = enlarge_nearest(image, min_width)
        large.save(target)
        factor = large.width // image.width
    note = (f"Enlarged {factor}x with nearest neighbour (each pixel a {factor}x{factor} block); `{name}` holds the "
            "same grid at its own size.")
    return target.name, note


def project_url() -> str | None:
    """The project's web address from the installed package's metadata (setup.cfg `url` or `project_urls`), or
    None while it has none: a card links to the project only at an address someone set."""
    try:
        metadata = importlib.metadata.metadata("pixelgpt")
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = [metadata.get("Home-page")] + [entry.split(",", 1)[-1].strip()
                                                for entry in metadata.get_all("Project-URL") or []]
    return next((url for url in candidates if url and re.match(r"https?://\S+$", url)), None)


def local_data(args) -> tuple[str, str]:
    """(type, name) of data that has no Hub id, for a card's model-index: an image folder or a local dataset."""
    return ("imagefolder", "local image folder") if args.train_data_dir else ("local", "local dataset")


def write_model_card(folder, *, args, config, processor, dataset_name, metrics, bits_name,
                     num_train_images: int | None, grid_name: str = "samples.png"):
    """Write README.md (YAML metadata + usage + results + hyper-parameters). Holds no token, no local path and
    no link to an address that was not set (see `project_url`). The card shows `grid_name` (the sample grid the
    run saved in `folder`) enlarged to at least CARD_GRID_MIN_WIDTH pixels, saved beside it as
    `samples_large.png`. Every held-out figure in `metrics` (bits, those of the untrained model, k-ahead bits) is
    both in the text and in the YAML model-index."""
    folder = Path(folder)
    repo_id = args.hub_model_id or folder.resolve().name
    is_default = dataset_name is not None and "built-in" in dataset_name
    hub_dataset = DEFAULT_DATASET_HUB_ID if is_default else dataset_name  # None for local data
    local = local_data(args)
    images = "images streamed" if num_train_images is None else f"{num_train_images} images"  # None: --streaming
    if is_default:
        subset = f"a {num_train_images}-image subset" if num_train_images else "the subset"
        dataset_text = f"{subset} of Fashion-MNIST (MIT, Zalando SE) shipped with PixelGPT"
    elif dataset_name:
        dataset_text = f"{images} from the `{dataset_name}` dataset"
    else:
        dataset_text = f"{images} from local files"
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
    k = config.parallel_tokens
    words = bits_name.replace("_", " ")
    figures = [(bits_name, f"held-out {words}", bits),  # (metric type, name, value): each one the run measured
               ("untrained_" + bits_name, f"held-out {words} of the untrained model (baseline)", untrained)]
    if k > 1:
        figures.append((f"{bits_name}_{k}_ahead", f"held-out {words}, {k}-ahead prediction",
                        metrics.get(f"{bits_name}_{k}_ahead")))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="unconditional-image-generation",
        tags=["pixelgpt", "image-generation", "autoregressive", "custom_code"],
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=[bits_name],
        model_name=repo_id,
        eval_results=[EvalResult(task_type="unconditional-image-generation", dataset_type=hub_dataset or local[0],
                                 dataset_name=hub_dataset or local[1], metric_type=metric_type,
                                 metric_name=name, metric_value=round(value, 4))
                      for metric_type, name, value in figures if value is not None],
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
    parallel_row = None
    if k > 1:
        hyperparameters.append(("parallel decoding", f"{k}-ahead prediction on {args.parallel_fraction:.0%} of steps"))
        parallel_row = (f"| {bits_name}, {k}-ahead (`generate_images(tokens_per_step={k})`: {k}x fewer passes) | "
                        f"{metrics[f'{bits_name}_{k}_ahead']:.4f} | |")
    grid = save_card_grid(folder, grid_name)
    card = ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        repo_id=repo_id,
        repo_note="" if args.hub_model_id else "  # this folder, or its Hub id once pushed",
        project_url=project_url(),
        grid=grid and grid[0],
        grid_note=grid and ("Held-out inputs (as the model reads them) beside the final model's outputs. "
                            if config.is_conditional else "Samples of the final model. ") + grid[1],
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


def update_model_card(folder, *, key: str, title: str, body: str, eval_results: list) -> ModelCard:
    """Add figures measured after training to `folder/README.md`: `body` as a section `## title` (between
    `<!-- pixelgpt:key -->` markers, before the hyper-parameters) and `eval_results` in the YAML model-index. A
    later call with the same `key` replaces that section and every result whose metric type starts with `key_`,
    so that a re-measured model shows each figure once."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found in the model folder {Path(folder).name}: the card that "
                                "train.py writes is what this adds to.")
    card = ModelCard.load(path)
    data = card.data
    data.eval_results = [r for r in data.eval_results or [] if not r.metric_type.startswith(f"{key}_")]
    data.eval_results += list(eval_results)
    data.model_name = data.model_name or Path(folder).resolve().name
    start, end = f"<!-- pixelgpt:{key} -->", f"<!-- /pixelgpt:{key} -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}\n\n"
    text = card.text
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1].lstrip("\n")
    elif "\n## Training\n" in text:
        before, after = text.split("\n## Training\n", 1)
        text = before.rstrip("\n") + "\n\n" + section + "## Training\n" + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.text = text
    card.save(path)
    return card
