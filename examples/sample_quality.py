"""Are a model's samples recognisably like its data? A small CNN trained on real images labels them.

    python examples/sample_quality.py --model pixelgpt-fashion --num_samples 200
    python examples/sample_quality.py --model emoji-model --train_data_dir emoji --num_samples 200   # any labels

The classifier is trained on the built-in training images after the model's own quantization (so it sees what the
model sees), plus an 11th "not clothing" class of noise and pixel-shuffled real images (without it, a classifier
labels noise confidently as some garment). It is checked on the held-out test images, then labels the model's samples
and, as the baseline, samples of an untrained model with the same configuration. Reported: the share of images
recognised as a garment class with confidence >= --confidence, the mean top probability, the class histogram (last
entry: not clothing) with its entropy over garments (diversity; 3.32 bits at most) and, for class-conditional
models, how often the label matches the requested class (chance: 10%; --guidance_scale sets classifier-free
guidance; several values report the curve; `per_class` gives the match for each class). Works for models
trained on the built-in data (28x28, 10 classes) and, with --train_data_dir, on a folder whose sub-folders are the
classes: the classifier then learns from the folder's training images (real pixels, colour, class-weighted so that
small classes count) and is checked on the images `train.py` held out (same --eval_fraction and --split_seed).

    python examples/sample_quality.py --model classcond-model --guidance_scale 1 2 3 4 5

Copies: a model that memorised its training images would score well here by reproducing them. The report's
`nearest_training_image` gives the distance (root mean square over pixels, 0-1 scale, as the classifier sees them)
from each sample to its nearest training image, beside the same distance for held-out real images: samples that sit
much closer to the training images than unseen real ones do are copies. The training images searched are the
classifier's, or with --nearest_dataset the whole training split of a dataset (train.py's --dataset_name).

Frechet distance: the report's `frechet_distance` fits a Gaussian to the classifier's 128 penultimate features (the
layer before its class scores) of each set of images, and gives the Frechet distance between it and the held-out
real images' Gaussian, as FID does with Inception-v3's features: for the samples, for an untrained model's samples
and for as many real training images (the floor). It needs no download (the classifier is trained here); lower is
closer. Like FID it depends on the number of images and on the classifier (data, --classifier_* flags, --seed):
compare only figures of the same number of images measured with the same classifier. The library code is
`pixelgpt.quality` (`measure`).

--fid adds the Frechet Inception Distance (torchmetrics with torch-fidelity's Inception-v3: `pip install -e
".[fid]"` in a clone) of the samples, of an untrained model's samples and of as many real training images (the floor
at that sample count) against the held-out images the classifier is checked on. The Inception weights are not
downloaded: pass the file with --inception_weights (see INCEPTION_WEIGHTS_NAME below for which one and where from).

    python examples/sample_quality.py --model pixelgpt-fashion --fid --inception_weights \
        weights-inception-2015-12-05-6726825d.pth
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from pixelgpt import training
from pixelgpt.default_data import load_default_dataset
from pixelgpt.quality import COLOUR_SIZE, GRAY_SIZE, RealImages, copy_reference, measure, quantized
from pixelgpt.utils import open_image

# The Inception-v3 network of FID (converted from the TensorFlow FID graph of 2015-12-05) as torch-fidelity publishes
# it; torchmetrics would download this file on first use, which machines without internet access cannot do.
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"
WEIGHTS_HELP = (f"FID needs the Inception-v3 FID weights as a local file, {INCEPTION_WEIGHTS_NAME} from "
                f"torch-fidelity's GitHub releases ({INCEPTION_WEIGHTS_URL}; pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth has the same parameter names and shapes). This script never "
                "downloads them (machines without internet access cannot): fetch the file on a machine that can, "
                "copy it anywhere here and pass its path with --inception_weights PATH.")


class FIDError(RuntimeError):
    """--fid cannot run: the message says what is missing (packages, weights file) and how to get it."""


def at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (the Frechet distances need a covariance), got {value}")
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Trained model folder or Hub id (with its image processor).")
    p.add_argument("--num_samples", type=at_least_two, default=200,
                   help="Samples to draw from each model (at least 2: the Frechet distances need a covariance).")
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
    p.add_argument("--train_data_dir", help="A folder of class sub-folders (the model's training data) instead of "
                   "the built-in Fashion-MNIST.")
    p.add_argument("--eval_fraction", type=float, default=0.05,
                   help="With --train_data_dir: the share train.py held out (its --eval_fraction).")
    p.add_argument("--split_seed", type=int, default=0, help="With --train_data_dir: train.py's --seed (the split).")
    p.add_argument("--nearest_dataset", metavar="DATASET",
                   help="The model's training data as train.py's --dataset_name (Hub name or local path, an 'image' "
                   "column): the copy check searches its whole training split (default: the classifier's training "
                   "images).")
    p.add_argument("--fid", action="store_true",
                   help="Also report the Frechet Inception Distance to the held-out images (lower is closer) of the "
                   "samples, of the untrained model's samples and of real training images; needs "
                   'pip install torchmetrics torch-fidelity (the "fid" extra) and --inception_weights.')
    p.add_argument("--inception_weights", metavar="PATH",
                   help=f"With --fid: the local Inception-v3 FID weights file ({INCEPTION_WEIGHTS_NAME}, from "
                   f"{INCEPTION_WEIGHTS_URL}); it is never downloaded.")
    p.add_argument("--fid_features", type=int, default=2048, choices=[64, 192, 768, 2048],
                   help="With --fid: the Inception layer compared (2048, the pool layer, is the FID that papers "
                   "report; the smaller ones are cheaper and only comparable among themselves).")
    p.add_argument("--fid_reference_images", type=int, default=None,
                   help="With --fid: held-out images the FID compares with (default: all that the classifier is "
                   "checked on). FID depends on the number of images: compare figures of equal counts only.")
    p.add_argument("--output", help="Write the report as JSON here.")
    return p


def fid_metric(args):
    """torchmetrics' FrechetInceptionDistance on the local weights file; raises FIDError saying what is missing.
    Called before anything slow, so that a missing file or package stops the run at once."""
    if not args.inception_weights:
        raise FIDError(f"--fid needs --inception_weights PATH. {WEIGHTS_HELP}")
    path = Path(args.inception_weights)
    if not path.is_file():
        raise FIDError(f"--inception_weights {path}: no such file. {WEIGHTS_HELP}")
    try:
        import torch_fidelity  # noqa: F401  (the Inception network that torchmetrics runs)
        from torchmetrics.image.fid import FrechetInceptionDistance
    except (ImportError, RuntimeError) as err:  # RuntimeError: a torchvision built for another torch
        raise FIDError('--fid needs torchmetrics and torch-fidelity (with a torchvision that matches torch): '
                       f'pip install torchmetrics torch-fidelity (in a clone: pip install -e ".[fid]") '
                       f'({type(err).__name__}: {err})') from err
    try:
        torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code in the file runs
        # reset_real_features=False: the reference images' features are computed once for every set compared.
        # antialias=False: the TensorFlow-compatible resize to 299x299 of the original FID.
        return FrechetInceptionDistance(feature=args.fid_features, reset_real_features=False, antialias=False,
                                        feature_extractor_weights_path=str(path))
    except Exception as err:  # not a state dict, or another network's (missing or unexpected keys, shapes)
        raise FIDError(f"--inception_weights {path} is not the Inception-v3 FID network "
                       f"({type(err).__name__}: {str(err)[:300]}). {WEIGHTS_HELP}") from err


def as_uint8_rgb(images, size: int) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) uint8, as the Inception network reads them (gray repeated over RGB)."""
    arrays = [np.asarray(i.convert("RGB") if i.size == (size, size) else
                         i.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class FID:
    """FID of sets of images against one reference set, whose Inception features are computed once."""

    def __init__(self, metric, reference, size: int, batch_size: int):
        self.metric, self.size, self.batch_size = metric, size, batch_size
        self.num_reference_images = len(reference)
        self._update(reference, real=True)

    def _update(self, images, real: bool):
        for i in range(0, len(images), self.batch_size):
            self.metric.update(as_uint8_rgb(images[i : i + self.batch_size], self.size), real=real)

    @torch.no_grad()
    def __call__(self, images) -> float:
        self.metric.reset()  # the reference features stay (reset_real_features=False)
        self._update(images, real=False)
        return float(self.metric.compute())


def decode_images(rows) -> list:
    """PIL images of a split's undecoded `image` column (as `training.load_splits` returns it)."""
    return [open_image(v, "image") for v in rows["image"]]


def load_real(args, processor):
    """(the real images the classifier learns from and is checked on, `see`: how the model sees an image):
    Fashion-MNIST as 28x28 gray (after the model's quantization), or a folder's classes as 32x32 colour."""
    if args.train_data_dir:
        # train.py's own split of the folder (the same flags give the same held-out images).
        train, held_out, _ = training.load_splits(training.DataArguments(
            train_data_dir=args.train_data_dir, eval_fraction=args.eval_fraction, max_eval_samples=10**9),
            seed=args.split_seed)
        test = {column: [row[column] for row in held_out] for column in ("image", "label")}
        size, mode, see, decode = COLOUR_SIZE, "RGB", lambda images: images, decode_images
    else:
        data = load_default_dataset()
        train, test = data["train"], data["test"]
        size, mode, see = GRAY_SIZE, "L", lambda images: quantized(processor, images)
        decode = lambda rows: rows["image"]  # noqa: E731
    rows = train.shuffle(seed=args.seed).select(range(min(args.classifier_train_images, len(train))))
    real = RealImages(names=train.features["label"].names, train_images=see(decode(rows)),
                      train_labels=rows["label"], test_images=see(decode(test)), test_labels=test["label"],
                      size=size, mode=mode)
    return real, see


def training_reference(args, real: RealImages, see) -> torch.Tensor:
    """The training images the copy check searches, `(M, C*S*S)` as the classifier sees them. Read before any
    sampling, so that a wrong --nearest_dataset fails at once."""
    train = real.train_images
    if args.nearest_dataset:
        rows, _, _ = training.load_splits(training.DataArguments(dataset_name=args.nearest_dataset, max_eval_samples=1))
        train = see(decode_images(rows))
    return copy_reference(train, real)


def main(args):
    metric = fid_metric(args) if args.fid else None
    if args.inception_weights and not args.fid:
        raise FIDError("--inception_weights is read only with --fid.")
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=True)
    real, see = load_real(args, processor)
    searched = training_reference(args, real, see)  # (M, C*S*S)
    fid = None
    if metric is not None:
        reference = real.test_images[: args.fid_reference_images]
        fid = FID(metric, reference, model.config.pixel_size, args.batch_size)
    report = measure(model, processor, real, num_samples=args.num_samples, guidance_scales=args.guidance_scale,
                     seed=args.seed, batch_size=args.batch_size, classifier_epochs=args.classifier_epochs,
                     confidence=args.confidence, temperature=args.temperature, tokens_per_step=args.tokens_per_step,
                     exact=args.exact, reference=searched,
                     extra_figures=None if fid is None else lambda images: {"fid": fid(images)})
    if fid is not None:
        report["fid"] = {"features": args.fid_features, "num_reference_images": fid.num_reference_images,
                         "reference": "held-out images (those the classifier is checked on)",
                         "num_images": args.num_samples,
                         "trained_model_samples": report["trained_model_samples"]["fid"],
                         "untrained_model_samples": report["untrained_model_samples"]["fid"],
                         "real_training_images": fid(real.train_images[: args.num_samples])}
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main(build_parser().parse_args())
    except FIDError as err:
        sys.exit(f"sample_quality.py: error: {err}")
