"""Model cards: the README.md that a training run writes beside its weights (`write_model_card` for a PixelGPT,
`write_tokenizer_card` for an image tokenizer) and that quality scripts add measured figures to
(`update_model_card`). A card holds no token, no local path and no link to an address that was not set; every
held-out figure is both in its text and in its YAML model-index."""

import importlib.metadata
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image

from .utils import CARD_GRID_MIN_WIDTH, enlarge_nearest

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
images = model.generate_images(num_images=8{{ example }})  # list of PIL images
images[0].save("sample.png")
```

## Results

| metric | held-out value | untrained model |
|---|---|---|
| {{ bits_name }} | {{ bits }} | {{ untrained_bits }} |
{% for row in extra_rows %}{{ row }}
{% endfor %}
{{ bits_note }}

## Training

| hyper-parameter | value |
|---|---|
{% for key, value in hyperparameters %}| {{ key }} | {{ value }} |
{% endfor %}
"""

# Hub id of the full dataset the built-in default is a subset of.
DEFAULT_DATASET_HUB_ID = "zalando-datasets/fashion_mnist"


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


def training_data(dataset_name: str | None, data, num_train_images: int | None) -> tuple[str | None, tuple, str]:
    """What a card says of the training data: (Hub dataset id or None for local data, (type, name) for the
    model-index, a phrase for the text). `data` is the run's `DataArguments`; `num_train_images` is None for a
    stream."""
    is_default = dataset_name is not None and "built-in" in dataset_name
    if is_default and data.builtin_data == "emoji":  # not a Hub dataset; its attribution goes on every card
        count = f"{num_train_images:,}" if num_train_images else "the"
        return None, ("twemoji", "Twemoji captions (built-in)"), (
            f"{count} captioned Twemoji images shipped with PixelGPT (Twemoji graphics by Twitter, Inc. and other "
            "contributors, CC-BY 4.0; captions made from their short names; some recoloured, captioned with the new "
            "colour)")
    hub_dataset = DEFAULT_DATASET_HUB_ID if is_default else dataset_name  # None for local data
    index = (hub_dataset,) * 2 if hub_dataset else (("imagefolder", "local image folder") if data.train_data_dir else
                                                    ("local", "local dataset"))
    images = "images streamed" if num_train_images is None else f"{num_train_images} images"
    if is_default:
        subset = f"a {num_train_images}-image subset" if num_train_images else "the subset"
        text = f"{subset} of Fashion-MNIST (MIT, Zalando SE) shipped with PixelGPT"
    elif dataset_name:
        text = f"{images} from the `{dataset_name}` dataset"
    else:
        text = f"{images} from local files"
    return hub_dataset, index, text


def index_results(task_type: str, index: tuple, figures: list, **extra) -> list[EvalResult]:
    """The YAML model-index entries of `figures` ((metric type, name, value); None values are left out)."""
    return [EvalResult(task_type=task_type, dataset_type=index[0], dataset_name=index[1], metric_type=metric_type,
                       metric_name=name, metric_value=round(value, 4), **extra)
            for metric_type, name, value in figures if value is not None]


def token_scheme(config, processor) -> str:
    """How the model's tokens stand for pixels, in words."""
    tokenizer = config.tokenizer_config
    if tokenizer is not None:
        return (f"the codes ({tokenizer.codebook_size:,}) of a learned image tokenizer carried in the model, one "
                f"token per {tokenizer.downsample_factor}x{tokenizer.downsample_factor} pixels ({config.image_size}x"
                f"{config.image_size} tokens)")
    return {"rgb8": "three lossless 8-bit tokens per pixel", "gray8": "one lossless 8-bit token per pixel",
            "rgb": f"{processor.num_levels} levels per colour channel, one token per pixel",
            "gray": f"{processor.num_levels} gray levels, one token per pixel",
            "palette": f"a {processor.vocab_size}-colour k-means palette, one token per pixel"}[processor.quantization]


def condition_cells(config) -> str:
    """How a conditional model reads its condition, when in cells: ", a 4x4 cell per token"."""
    patch = getattr(config, "condition_patch_size", 1)
    return f", a {patch}x{patch} cell per token" if patch > 1 else ""


def hyperparameters(args, config, processor, metrics: dict) -> list[tuple]:
    """The card's hyper-parameter table of a PixelGPT run (`args`: its `TrainingArguments`)."""
    run, model = args.run, args.model
    rows = [
        ("model size", f"{model.model_size} ({config.hidden_size} wide, {config.num_hidden_layers} layers, "
                       f"{config.num_attention_heads} heads)"),
        ("task", config.task + (f" (condition: {config.condition_size}x{config.condition_size} "
                                f"{processor.condition_quantization}{condition_cells(config)})"
                                if config.is_conditional else "")),
        ("resolution", args.image.resolution),
        ("quantization", "image tokenizer" + (f", trained in this run (stage one, {metrics['tokenizer_steps']} steps)"
                                              if "tokenizer_steps" in metrics else "")
         if config.tokenizer_config is not None else processor.quantization),
        ("vocabulary", config.vocab_size),
        ("class conditional", f"yes, class dropout {model.class_dropout_prob}" if config.num_classes else "no"),
        ("steps" + (" (stage two)" if "tokenizer_steps" in metrics else ""), metrics["steps"]),
        ("batch size per device", run.train_batch_size),
        ("gradient accumulation", run.gradient_accumulation_steps), ("learning rate", run.learning_rate),
        ("warm-up steps", run.lr_warmup_steps), ("schedule", "linear warm-up, cosine decay"),
        ("AdamW betas", f"({run.adam_beta1}, {run.adam_beta2})"), ("weight decay", run.weight_decay),
        ("gradient clipping", run.max_grad_norm), ("EMA", run.ema_decay if run.use_ema else "off"),
        ("mixed precision", run.mixed_precision or "accelerate default"), ("seed", run.seed),
        ("training time (s)", metrics.get("train_seconds")),
    ]
    if config.parallel_tokens > 1:
        rows.append(("parallel decoding", f"{config.parallel_tokens}-ahead prediction on "
                                          f"{model.parallel_fraction:.0%} of steps"))
    return rows


def write_model_card(folder, *, args, config, processor, dataset_name, metrics, bits_name,
                     num_train_images: int | None, grid_name: str = "samples.png", grid_note: str | None = None,
                     prompt: str | None = None, guidance: float = 1.0):
    """Write a PixelGPT's README.md (YAML metadata + usage + results + hyper-parameters); `args` is the run's
    `TrainingArguments`. The card shows `grid_name` (the sample grid the run saved in `folder`) enlarged to at
    least CARD_GRID_MIN_WIDTH pixels, saved beside it as `samples_large.png`, with `grid_note` (what the grid shows;
    a default sentence without it), and `prompt` (at `guidance`) in its code for a text model. Every held-out figure
    in `metrics` (bits, those of the untrained model, k-ahead bits) is both in the text and in the YAML model-index."""
    folder = Path(folder)
    repo_id = args.run.hub_model_id or folder.resolve().name
    hub_dataset, index, dataset_text = training_data(dataset_name, args.data, num_train_images)
    bits, untrained = metrics[bits_name], metrics.get("untrained_" + bits_name)
    k, words = config.parallel_tokens, bits_name.replace("_", " ")
    figures = [(bits_name, f"held-out {words}", bits),  # (metric type, name, value): each one the run measured
               ("untrained_" + bits_name, f"held-out {words} of the untrained model (baseline)", untrained)]
    extra_rows = []
    if k > 1:
        figures.append((f"{bits_name}_{k}_ahead", f"held-out {words}, {k}-ahead prediction",
                        metrics.get(f"{bits_name}_{k}_ahead")))
        extra_rows.append(f"| {bits_name}, {k}-ahead (`generate_images(tokens_per_step={k})`: {k}x fewer passes) | "
                          f"{metrics[f'{bits_name}_{k}_ahead']:.4f} | |")
    if "tokenizer_psnr" in metrics:  # stage one of the same run (--tokenizer train)
        grid_side = config.image_size
        figures += [("tokenizer_psnr", "held-out reconstruction PSNR (dB) of the tokenizer", metrics["tokenizer_psnr"]),
                    ("tokenizer_bicubic_psnr", f"held-out PSNR (dB) of bicubic from {grid_side}x{grid_side} RGB "
                                               "(the tokenizer's same-budget baseline)",
                     metrics["tokenizer_bicubic_psnr"])]
        extra_rows.append(f"| tokenizer (stage one): reconstruction PSNR, dB | {metrics['tokenizer_psnr']:.2f} | "
                          f"bicubic from {grid_side}x{grid_side} RGB: {metrics['tokenizer_bicubic_psnr']:.2f} |")
    example = ", class_labels=[0]" if config.num_classes else ""
    if config.is_text_conditional:
        example = f", prompt={prompt or ''!r}, guidance_scale={guidance:g}"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-to-image" if config.is_text_conditional else "unconditional-image-generation",
        tags=["pixelgpt", "image-generation", "autoregressive", "custom_code"],
        datasets=[hub_dataset] if hub_dataset else None, metrics=[bits_name], model_name=repo_id,
        eval_results=index_results("unconditional-image-generation", index, figures))
    grid = save_card_grid(folder, grid_name)
    card = ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, repo_id=repo_id,
        repo_note="" if args.run.hub_model_id else "  # this folder, or its Hub id once pushed",
        project_url=project_url(), grid=grid and grid[0],
        grid_note=grid and (grid_note or ("Held-out inputs (as the model reads them) beside the final model's outputs."
                                          if config.is_conditional else "Samples of the final model.")) + " " + grid[1],
        model_name=repo_id, resolution=config.pixel_size, token_scheme=token_scheme(config, processor),
        dataset_text=dataset_text, example=example,
        bits_name=bits_name, bits=f"{bits:.4f}",
        untrained_bits="n/a (resumed run)" if untrained is None else f"{untrained:.4f}",
        bits_note=("Bits per dimension: mean negative log-likelihood over 8-bit sub-pixels, in bits (comparable with "
                   "published results)." if bits_name == "bits_per_dim" else
                   "Bits per token: mean negative log-likelihood of the quantized tokens, in bits; it depends on the "
                   "quantization and is not comparable with 8-bit bits/dim."),
        hyperparameters=hyperparameters(args, config, processor, metrics), extra_rows=extra_rows,
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


def prompt_section(max_text_length: int, examples: list[str]) -> str:
    """A text model's card section: what its prompts look like (`examples`: some of its captions) and how they are
    read."""
    shown = ", ".join(f"`{e}`" for e in examples[:6]) or "(none)"
    return (f"This model draws from text prompts, worded as its training captions are: {shown}. A prompt is read in "
            f"lower case and may be at most {max_text_length} tokens long (a longer one is refused, naming the "
            "limit); a word that no caption had is read as the word pieces it shares with known words. The empty "
            "prompt draws unconditionally; `guidance_scale` > 1 steers towards the prompt (classifier-free guidance: "
            "the model also learned the empty prompt) and `negative_prompt=` away from another one; the prompt "
            "without one word as `negative_prompt` stresses that word (`prompt=\"purple square\", negative_prompt="
            "\"square\", guidance_scale=4.0, temperature=0.7`: the colour decides). Every image "
            "method takes `prompt=` (e.g. `model.inpaint_images(image, mask, prompt=...)`), and so does "
            "`pipeline(\"text-to-image\", model=..., trust_remote_code=True)`.")


def write_tokenizer_card(folder: Path, args, config, metrics: dict, dataset_name, num_train_images: int | None):
    """An image tokenizer's README.md (`args`: the run's `TokenizerTrainingArguments`): what it does, how to load it
    and train a PixelGPT on it, and the measured figures."""
    repo_id = args.run.hub_model_id or folder.resolve().name
    hub_dataset, index, data = training_data(dataset_name, args.data, num_train_images)
    # Every held-out figure is in the YAML model-index too (PSNR of the tokenizer and of the baseline, code usage).
    figures = [("psnr", "held-out reconstruction PSNR (dB)", metrics["psnr"]),
               ("bicubic_psnr", f"held-out PSNR (dB) of the same-budget baseline: bicubic from {config.grid_size}x"
                                f"{config.grid_size} RGB", metrics["bicubic_psnr"]),
               ("codebook_usage", "share of the codebook the held-out images use", metrics["codebook_usage"])]
    results = index_results("image-to-image", index, figures,
                            task_name="image reconstruction through the token grid")
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


def sample_quality_section(report: dict) -> tuple[str, list]:
    """The card section of `pixelgpt.quality.measure`'s report (several guidance scales): a table per guidance
    scale, the real and untrained rows, the copy check; and the (metric type, name, value) figures for the
    model-index, their types starting with `sample_quality_`."""
    curve = report.get("guidance_curve") or {str(report["sampling"]["guidance_scale"]): report["trained_model_samples"]}
    fd = report["frechet_distance"]
    real, untrained = report["real_test_images"], report["untrained_model_samples"]
    rows = [f"| samples, guidance {float(scale):g} | {entry['matches_requested_class']:.1%} | "
            f"{entry['recognised_share']:.1%} | {entry['frechet_distance']:.2f} |" for scale, entry in curve.items()]
    rows.append(f"| untrained model | {untrained['matches_requested_class']:.1%} | {untrained['recognised_share']:.1%} "
                f"| {untrained['frechet_distance']:.2f} |")
    rows.append(f"| real images (held-out; training images for the distance) | {real['matches_requested_class']:.1%} "
                f"| {real['recognised_share']:.1%} | {fd['real_training_images']:.2f} |")
    copies = report["nearest_training_image"]
    first = float(report["sampling"]["guidance_scale"])
    body = f"""{fd['num_images']} samples per row, judged by a small CNN trained on this run's training images (it
labels {report['classifier_test_accuracy']:.1%} of the held-out images correctly; an extra class takes noise).
*Class match*: the share labelled as the class asked for (chance: {1 / len(real['per_class']):.0%}); *recognised*:
labelled as some class with probability >= 0.8; *Frechet distance*: between the set and the held-out images in
{fd['features']} (lower is closer; the real-image row is the floor at this count).

| images | class match | recognised | Frechet distance |
|---|---|---|---|
""" + "\n".join(rows) + f"""

Copy check: the median distance (RMS, 0-1) from a sample (guidance {first:g}) to its nearest of the
{copies['training_images_searched']} training images searched is {copies['samples']['median']:.3f}, from a held-out
image {copies['held_out_real_images']['median']:.3f}: samples sitting much closer than unseen images would be copies.
"""
    figures = []
    for scale, entry in curve.items():
        g = f"{float(scale):g}"
        figures += [(f"sample_quality_class_match_g{g}", f"class match of samples at guidance {g}",
                     entry["matches_requested_class"]),
                    (f"sample_quality_recognised_g{g}", f"recognised share of samples at guidance {g}",
                     entry["recognised_share"]),
                    (f"sample_quality_frechet_g{g}", f"Frechet distance in classifier features at guidance {g}",
                     entry["frechet_distance"])]
    figures += [("sample_quality_recognised_real", "recognised share of held-out real images",
                 real["recognised_share"]),
                ("sample_quality_frechet_real", "Frechet distance of real training images (floor)",
                 fd["real_training_images"])]
    return body, figures
