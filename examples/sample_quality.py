"""Are a model's samples recognisably Fashion-MNIST? A small CNN trained on the built-in real images labels them.

    python examples/sample_quality.py --model pixelgpt-fashion --num_samples 200

The classifier is trained on the built-in training images after the model's own quantization (so it sees what the
model sees), plus an 11th "not clothing" class of noise and pixel-shuffled real images (without it, a classifier
labels noise confidently as some garment). It is checked on the held-out test images, then labels the model's samples
and, as the baseline, samples of an untrained model with the same configuration. Reported: the share of images
recognised as a garment class with confidence >= --confidence, the mean top probability, the class histogram (last
entry: not clothing) with its entropy over garments (diversity; 3.32 bits at most) and, for class-conditional
models, how often the label matches the requested class (chance: 10%; --guidance_scale sets classifier-free
guidance; several values report the curve). Works for models trained on the built-in data (28x28, 10 classes).

    python examples/sample_quality.py --model classcond-model --guidance_scale 1 2 3 4 5
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel

from pixelgpt.default_data import load_default_dataset


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Trained model folder or Hub id (with its image processor).")
    p.add_argument("--num_samples", type=int, default=200, help="Samples to draw from each model.")
    p.add_argument("--batch_size", type=int, default=50, help="Images sampled together.")
    p.add_argument("--confidence", type=float, default=0.8, help="Top probability that counts as 'confident'.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature for the model's samples.")
    p.add_argument("--tokens_per_step", type=int, default=1,
                   help="Tokens drawn per forward pass (the model's parallel_tokens): approximate parallel decoding "
                   "unless --exact.")
    p.add_argument("--exact", action="store_true",
                   help="With --tokens_per_step k: exact speculative sampling (the one-token distribution).")
    p.add_argument("--guidance_scale", type=float, nargs="+", default=[1.0],
                   help="Classifier-free guidance of a class-conditional model's samples (1 = none). Several values "
                   "(e.g. 1 2 3 4 5) add a `guidance_curve` to the report; the first gives `trained_model_samples`.")
    p.add_argument("--classifier_epochs", type=int, default=4, help="Epochs of classifier training.")
    p.add_argument("--classifier_train_images", type=int, default=6000, help="Built-in training images it learns from.")
    p.add_argument("--seed", type=int, default=0, help="Seed for the classifier and the samples.")
    p.add_argument("--output", help="Write the report as JSON here.")
    return p


NUM_CLASSES = 10  # Fashion-MNIST; index 10 is "not clothing"


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # (B, 32, 14, 14)
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # (B, 64, 7, 7)
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES + 1),
    )


def as_input(images) -> torch.Tensor:
    """PIL images -> (B, 1, 28, 28) float in [0, 1]."""
    arrays = [np.asarray(i.convert("L").resize((28, 28))) for i in images]
    return torch.from_numpy(np.stack(arrays)).float().div(255).unsqueeze(1)


def quantized(processor, images):
    return processor.decode(processor(images).input_ids)


def train_classifier(processor, rows, epochs, seed):
    torch.manual_seed(seed)
    x = as_input(quantized(processor, rows["image"]))
    y = torch.tensor(rows["label"])
    # "Not clothing": uniform noise and real images with their pixels shuffled, as many as one garment class.
    extra = len(x) // NUM_CLASSES
    noise = torch.rand(extra // 2, 1, 28, 28)
    shuffled = x[:extra - extra // 2].flatten(1)[:, torch.randperm(28 * 28)].view(-1, 1, 28, 28)
    x = torch.cat([x, noise, shuffled])
    y = torch.cat([y, torch.full((extra,), NUM_CLASSES)])
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def describe(net, images, confidence, requested=None):
    probs = net(as_input(images)).softmax(-1)
    top, label = probs.max(-1)
    recognised = (top >= confidence) & (label < NUM_CLASSES)
    histogram = torch.bincount(label, minlength=NUM_CLASSES + 1)
    # Diversity: entropy of the garment labels (log2(10) = 3.32 bits when all classes are equally frequent). A high
    # recognised share with a low entropy means samples collapsed onto a few classes.
    share = histogram[:NUM_CLASSES].float() / histogram[:NUM_CLASSES].sum().clamp(min=1)
    entropy = float(-(share[share > 0] * share[share > 0].log2()).sum())
    report = {"recognised_share": float(recognised.float().mean()), "mean_top_probability": float(top.mean()),
              "class_entropy_bits": entropy, "class_histogram": histogram.tolist()}
    if requested is not None:
        report["matches_requested_class"] = float((label == torch.tensor(requested)).float().mean())
    return report


def sample(model, processor, args, guidance_scale):
    labels = None
    if model.config.num_classes:
        labels = [i % model.config.num_classes for i in range(args.num_samples)]
    guidance = guidance_scale if labels else 1.0
    images = model.generate_images(1 if labels else args.num_samples, class_labels=labels, image_processor=processor,
                                   temperature=args.temperature, tokens_per_step=args.tokens_per_step,
                                   exact=args.exact, guidance_scale=guidance,
                                   generator=torch.Generator().manual_seed(args.seed), batch_size=args.batch_size)
    return images, labels


def main(args):
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=True)
    data = load_default_dataset()
    rows = data["train"].shuffle(seed=args.seed).select(range(min(args.classifier_train_images, len(data["train"]))))
    net = train_classifier(processor, rows, args.classifier_epochs, args.seed)
    with torch.no_grad():
        test_x = as_input(quantized(processor, data["test"]["image"]))
        test_accuracy = float((net(test_x).argmax(-1) == torch.tensor(data["test"]["label"])).float().mean())
    first = args.guidance_scale[0]
    report = {"sampling": {"temperature": args.temperature, "tokens_per_step": args.tokens_per_step,
                           "exact": args.exact, "guidance_scale": first, "seed": args.seed},
              "classifier_test_accuracy": test_accuracy,
              "real_test_images": describe(net, quantized(processor, data["test"]["image"]), args.confidence)}
    for scale in args.guidance_scale:
        images, requested = sample(model, processor, args, scale)
        described = describe(net, images, args.confidence, requested)
        if scale == first:
            report["trained_model_samples"] = described
        if len(args.guidance_scale) > 1:
            report.setdefault("guidance_curve", {})[str(scale)] = {
                key: described[key] for key in ("matches_requested_class", "recognised_share", "class_entropy_bits")
                if key in described}
    torch.manual_seed(args.seed)
    untrained = type(model)(model.config).eval()
    images, requested = sample(untrained, processor, args, first)
    report["untrained_model_samples"] = describe(net, images, args.confidence, requested)
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(build_parser().parse_args())
