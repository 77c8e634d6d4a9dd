"""Are a model's samples recognisably like its data? A small CNN trained on real images judges them.

The classifier learns the real training images (as the model sees them) plus one more class, "none of the classes",
of noise and pixel-shuffled real images (without it, it labels noise confidently as some class). `measure` trains it,
checks it on the held-out images, then describes a model's samples and, as the baseline, an untrained model's:
the share recognised with confidence, the class histogram and its entropy (diversity), how often a class-conditional
model's sample shows the requested class, how close samples sit to the training images (copies), and the Frechet
distance to the held-out images in the classifier's own feature space (needs no download, unlike FID's Inception
network; lower is closer; compare only figures of the same number of images and the same classifier).
`examples/sample_quality.py` is its command line.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# How the classifier sees an image: gray data as 28x28 "L" (Fashion-MNIST's size), anything else as 32x32 "RGB".
GRAY_SIZE, COLOUR_SIZE = 28, 32
# Width of the classifier's penultimate layer: the features the Frechet distance compares.
NUM_FEATURES = 128
FEATURES_NAME = f"the project classifier's {NUM_FEATURES} penultimate features"
# The guidance curve's figures of each scale (and whatever `extra_figures` adds).
CURVE_KEYS = ("matches_requested_class", "recognised_share", "class_entropy_bits", "frechet_distance")


@dataclass
class RealImages:
    """The real images the classifier learns from (`train_*`) and is checked on (`test_*`, held out), as the model
    sees them (after its quantization), with their class names; `size` and `mode` say how the classifier sees an
    image ("L" or "RGB", resized to size x size). `from_images` picks them from the images. Give the training
    images in random order: the Frechet floor (`measure`) takes the first `num_samples` of them."""

    names: list
    train_images: list
    train_labels: list
    test_images: list
    test_labels: list
    size: int
    mode: str

    def __post_init__(self):
        self.names = list(self.names)
        self.train_images, self.test_images = list(self.train_images), list(self.test_images)
        self.train_labels = [int(v) for v in self.train_labels]
        self.test_labels = [int(v) for v in self.test_labels]
        if not self.names:
            raise ValueError("RealImages needs at least one class name.")
        if self.mode not in ("L", "RGB"):
            raise ValueError(f"RealImages mode must be 'L' or 'RGB', got {self.mode!r}.")
        if not isinstance(self.size, int) or self.size < 4:
            raise ValueError(f"RealImages size must be an integer of at least 4 pixels, got {self.size!r}.")
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) != len(labels):
                raise ValueError(f"RealImages has {len(images)} {split} images but {len(labels)} {split} labels.")
            bad = [v for v in labels if not 0 <= v < len(self.names)]
            if bad:
                raise ValueError(f"RealImages {split} label {bad[0]} is not a class index 0..{len(self.names) - 1} "
                                 f"({len(self.names)} class names).")
        if not self.train_images:
            raise ValueError("RealImages needs at least one training image.")

    @classmethod
    def from_images(cls, names, train_images, train_labels, test_images, test_labels) -> "RealImages":
        """Seen as 28x28 gray ("L") when every training image is a PIL "L" image, else as 32x32 "RGB"."""
        train_images = list(train_images)
        gray = bool(train_images) and all(image.mode == "L" for image in train_images)
        return cls(names, train_images, train_labels, test_images, test_labels,
                   size=GRAY_SIZE if gray else COLOUR_SIZE, mode="L" if gray else "RGB")


def quantized(processor, images) -> list:
    """PIL images as the model sees them: through its image processor's quantization and back (only resized for a
    model on a tokenizer's grid, whose processor is lossless 8-bit RGB)."""
    return processor.decode(processor(images).input_ids)


def classifier(num_classes: int, channels: int, size: int) -> nn.Module:
    """The CNN: two conv blocks, a 128-unit ReLU layer (the features) and `num_classes + 1` logits."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, S/2, S/2)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),        # (B, 64, S/4, S/4)
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * (size // 4) ** 2, NUM_FEATURES), nn.ReLU(),
        nn.Linear(NUM_FEATURES, num_classes + 1),  # the last: "none of the classes"
    )


def as_input(images, real: RealImages) -> torch.Tensor:
    """PIL images -> (B, C, S, S) float in [0, 1], as the classifier sees them."""
    arrays = [np.asarray(i.convert(real.mode).resize((real.size, real.size))) for i in images]
    x = torch.from_numpy(np.stack(arrays)).float().div(255)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def train_classifier(real: RealImages, epochs: int, seed: int) -> nn.Module:
    """The classifier trained on `real`'s training images (and the "none" class), returned in eval mode."""
    torch.manual_seed(seed)
    num_classes = len(real.names)
    x = as_input(real.train_images, real)
    y = torch.tensor(real.train_labels)
    # "None of the classes": uniform noise and real images with their pixels shuffled, as many as one class.
    extra = len(x) // num_classes
    noise = torch.rand(extra // 2, *x.shape[1:])
    shuffled = x[:extra - extra // 2].flatten(2)[:, :, torch.randperm(real.size**2)].view(-1, *x.shape[1:])
    x = torch.cat([x, noise, shuffled])
    y = torch.cat([y, torch.full((extra,), num_classes)])
    # Each class weighs the same in the loss however many images it has (Fashion-MNIST is balanced anyway).
    weight = len(y) / (num_classes + 1) / torch.bincount(y, minlength=num_classes + 1).clamp(min=1).float()
    net = classifier(num_classes, x.shape[1], real.size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def describe(net, images, confidence: float, real: RealImages, requested=None) -> dict:
    """What the classifier makes of `images`: the share recognised as a class with probability >= `confidence`,
    the mean top probability, the class histogram (last entry: none of the classes) and its entropy over the
    classes; with the `requested` class of each image, how often it shows that class, overall and per class."""
    num_classes = len(real.names)
    probs = net(as_input(images, real)).softmax(-1)
    top, label = probs.max(-1)
    recognised = (top >= confidence) & (label < num_classes)
    histogram = torch.bincount(label, minlength=num_classes + 1)
    # Diversity: entropy of the class labels (log2(10) = 3.32 bits when 10 classes are equally frequent). A high
    # recognised share with a low entropy means samples collapsed onto a few classes.
    share = histogram[:num_classes].float() / histogram[:num_classes].sum().clamp(min=1)
    entropy = float(-(share[share > 0] * share[share > 0].log2()).sum())
    report = {"recognised_share": float(recognised.float().mean()), "mean_top_probability": float(top.mean()),
              "class_entropy_bits": entropy, "class_histogram": histogram.tolist()}
    if requested is not None:
        requested = torch.tensor(requested)
        report["matches_requested_class"] = float((label == requested).float().mean())
        report["per_class"] = {name: float((label[requested == c] == c).float().mean())
                               for c, name in enumerate(real.names) if (requested == c).any()}
    return report


def copy_reference(images, real: RealImages) -> torch.Tensor:
    """Training images as the copy check searches them: `(M, C*S*S)`, as the classifier sees them."""
    return as_input(images, real).flatten(1)


@torch.no_grad()
def nearest_distances(images, reference: torch.Tensor, real: RealImages) -> torch.Tensor:
    """Root-mean-square pixel distance (0-1 scale) from each image to its nearest row of `reference` (M, C*S*S)."""
    x = as_input(images, real).flatten(1)  # (B, C*S*S)
    return torch.cat([torch.cdist(part, reference).min(1).values for part in x.split(256)]) / x.shape[1] ** 0.5


def copy_check(reference: torch.Tensor, real: RealImages, samples) -> dict:
    """How close samples sit to the training images (`reference`, see `copy_reference`), beside as many held-out
    real images: samples much closer to the training images than unseen real ones are copies."""

    def summary(distances):
        return {"median": float(distances.median()), "5th_percentile": float(distances.quantile(0.05))}

    return {"training_images_searched": len(reference), "samples": summary(nearest_distances(samples, reference, real)),
            "held_out_real_images": summary(nearest_distances(real.test_images[: len(samples)], reference, real))}


@torch.no_grad()
def classifier_features(net: nn.Module, images, real: RealImages, batch_size: int = 256) -> torch.Tensor:
    """The classifier's penultimate layer (after the 128-unit ReLU) for `images`: `(N, 128)` float32, in eval mode
    (no dropout); `net` is left in the mode it was in."""
    if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
        raise ValueError("classifier_features needs the classifier of `train_classifier` (an nn.Sequential ending "
                         f"in a Linear layer), got {type(net).__name__}.")
    images = list(images)
    if not images:
        return torch.zeros(0, net[-1].in_features)
    was_training = net.training
    net.eval()
    try:
        body = net[:-1]
        return torch.cat([body(as_input(images[i : i + batch_size], real)) for i in range(0, len(images), batch_size)])
    finally:
        net.train(was_training)


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two sets of features `(N, D)` and `(M, D)`:
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64 (covariances with N - 1). The trace of the
    square root is the sum of the square roots of the eigenvalues of S_a S_b (real parts, clamped at 0), as
    torchmetrics computes FID."""
    a = torch.as_tensor(features_a).detach().cpu().double()
    b = torch.as_tensor(features_b).detach().cpu().double()
    for name, x in (("features_a", a), ("features_b", b)):
        if x.ndim != 2:
            raise ValueError(f"frechet_distance: {name} must be (N, D), got shape {tuple(x.shape)}.")
        if len(x) < 2:
            raise ValueError(f"frechet_distance needs at least 2 rows in each set (a covariance); {name} has "
                             f"{len(x)}.")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: the sets have {a.shape[1]} and {b.shape[1]} features; they must match.")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("frechet_distance: the features hold NaN or infinite values.")
    mean = (a.mean(0) - b.mean(0)).square().sum()
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)  # D = 1 too
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    return float(mean + cov_a.trace() + cov_b.trace() - 2 * root_trace)


def _sample(model, processor, num_samples: int, guidance_scale: float, sampling: dict):
    """`num_samples` images of `model` (for a class-conditional model, classes 0, 1, ... in turn, guided by
    `guidance_scale`) and the requested class of each (None when unconditional)."""
    labels = None
    if model.config.num_classes:
        labels = [i % model.config.num_classes for i in range(num_samples)]
    guidance = guidance_scale if labels else 1.0
    images = model.generate_images(1 if labels else num_samples, class_labels=labels, image_processor=processor,
                                   temperature=sampling["temperature"], tokens_per_step=sampling["tokens_per_step"],
                                   exact=sampling["exact"], guidance_scale=guidance,
                                   generator=torch.Generator().manual_seed(sampling["seed"]),
                                   batch_size=sampling["batch_size"])
    return images, labels


def untrained_copy(model, seed: int):
    """A model of the same configuration with fresh weights (drawn after `torch.manual_seed(seed)`), in eval mode:
    the baseline. A learned image tokenizer is copied over: the baseline is an untrained transformer, not an
    untrained tokenizer."""
    torch.manual_seed(seed)
    untrained = type(model)(model.config).eval()
    if model.image_tokenizer is not None:
        untrained.image_tokenizer.load_state_dict(model.image_tokenizer.state_dict())
    return untrained.to(model.device)


def _check_measure(real, num_samples, guidance_scales, batch_size, classifier_epochs, confidence, reference):
    """The guidance scales as a list of floats; a ValueError for arguments `measure` cannot work with."""
    if not isinstance(real, RealImages):
        raise ValueError(f"measure needs a RealImages, got {type(real).__name__}.")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"measure needs num_samples >= 2 (the Frechet distance needs a covariance), got "
                         f"{num_samples!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"measure needs batch_size >= 1, got {batch_size!r}.")
    if not isinstance(classifier_epochs, int) or classifier_epochs < 0:
        raise ValueError(f"measure needs classifier_epochs >= 0, got {classifier_epochs!r}.")
    if not 0 <= confidence <= 1:
        raise ValueError(f"measure needs a confidence in [0, 1], got {confidence!r}.")
    for split, images in (("training", real.train_images), ("held-out", real.test_images)):
        if len(images) < 2:
            raise ValueError(f"measure needs at least 2 {split} real images (the Frechet distance needs a "
                             f"covariance), got {len(images)}.")
    scales = [float(guidance_scales)] if isinstance(guidance_scales, (int, float)) else [
        float(s) for s in guidance_scales]
    if not scales:
        raise ValueError("measure needs at least one guidance scale.")
    width = (1 if real.mode == "L" else 3) * real.size**2
    if reference is not None and not isinstance(reference, torch.Tensor):
        raise ValueError(f"measure: reference must be a tensor (see copy_reference), got {type(reference).__name__}.")
    if reference is not None and (reference.ndim != 2 or reference.shape[1] != width or len(reference) == 0):
        raise ValueError(f"measure: reference must be training images as copy_reference gives them, (M, {width}) "
                         f"with M >= 1, got shape {tuple(reference.shape)}.")
    return scales


def measure(model, processor, real: RealImages, *, num_samples: int = 200, guidance_scales: Sequence[float] = (3.0,),
            seed: int = 0, batch_size: int = 50, classifier_epochs: int = 4, confidence: float = 0.8,
            temperature: float = 1.0, tokens_per_step: int = 1, exact: bool = False,
            reference: torch.Tensor | None = None, extra_figures: Callable[[list], dict] | None = None) -> dict:
    """Train the classifier on `real` and judge `num_samples` samples of `model` at each guidance scale (the first
    gives `trained_model_samples` and the copy check; several add a `guidance_curve`) and of an untrained model of
    the same configuration (`untrained_model_samples`). `frechet_distance` compares each set, and as many real
    training images (the floor), with the held-out real images in the classifier's feature space. `reference`: the
    copy check's training images (`copy_reference`; default: the classifier's). `extra_figures(images)` is called on
    each set of samples; its dict is merged into that set's entry (and the guidance curve). The global (CPU) random
    state is left as it was, and `model` in the mode it was in."""
    scales = _check_measure(real, num_samples, guidance_scales, batch_size, classifier_epochs, confidence, reference)
    sampling = {"temperature": temperature, "tokens_per_step": tokens_per_step, "exact": exact, "seed": seed,
                "batch_size": batch_size}
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            model.eval()
            return _measure(model, processor, real, num_samples, scales, sampling, classifier_epochs, confidence,
                            reference, extra_figures)
    finally:
        model.train(was_training)


def _measure(model, processor, real, num_samples, scales, sampling, epochs, confidence, reference, extra) -> dict:
    seed, first = sampling["seed"], scales[0]
    if reference is None:
        reference = copy_reference(real.train_images, real)
    net = train_classifier(real, epochs, seed)
    real_described = describe(net, real.test_images, confidence, real, real.test_labels)
    held_out = classifier_features(net, real.test_images, real)

    def figures(images, requested) -> tuple[dict, list]:
        described = describe(net, images, confidence, real, requested)
        described["frechet_distance"] = frechet_distance(classifier_features(net, images, real), held_out)
        added = extra(images) if extra is not None else {}
        described.update(added)
        return described, list(added)

    report = {"sampling": {"temperature": sampling["temperature"], "tokens_per_step": sampling["tokens_per_step"],
                           "exact": sampling["exact"], "guidance_scale": first, "seed": seed},
              # its accuracy: how often a held-out image shows the class it is labelled with
              "classifier_test_accuracy": real_described["matches_requested_class"],
              "real_test_images": real_described}
    for scale in scales:
        images, requested = _sample(model, processor, num_samples, scale, sampling)
        described, added = figures(images, requested)
        if scale == first:
            report["trained_model_samples"] = described
            report["nearest_training_image"] = copy_check(reference, real, images)
        if len(scales) > 1:
            report.setdefault("guidance_curve", {})[str(scale)] = {
                key: described[key] for key in (*CURVE_KEYS, *added) if key in described}
    images, requested = _sample(untrained_copy(model, seed), processor, num_samples, first, sampling)
    report["untrained_model_samples"] = figures(images, requested)[0]
    report["frechet_distance"] = {
        "features": FEATURES_NAME, "reference": "held-out real images", "num_images": num_samples,
        "trained_model_samples": report["trained_model_samples"]["frechet_distance"],
        "untrained_model_samples": report["untrained_model_samples"]["frechet_distance"],
        "real_training_images": frechet_distance(
            classifier_features(net, real.train_images[:num_samples], real), held_out)}
    return report
