"""pixelgpt.quality: the sample classifier, its features, the Frechet distance and `measure` (tiny data: seconds)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixelgpt import quality

from conftest import make_model


# ----------------------------------------------------------------------------------------------------- RealImages
def gray(value, size=8):
    return Image.new("L", (size, size), value)


def colour(value, size=8):
    return Image.new("RGB", (size, size), (value, 0, 255 - value))


def test_real_images_are_seen_as_28_gray_when_every_training_image_is_gray_else_as_32_colour():
    real = quality.RealImages.from_images(["a", "b"], [gray(0), gray(255)], [0, 1], [gray(9)], [1])
    assert (real.size, real.mode) == (28, "L")
    mixed = quality.RealImages.from_images(["a", "b"], [gray(0), colour(255)], [0, 1], [gray(9)], [1])
    assert (mixed.size, mixed.mode) == (32, "RGB")
    assert quality.as_input(mixed.train_images, mixed).shape == (2, 3, 32, 32)
    assert quality.as_input(real.train_images, real).shape == (2, 1, 28, 28)


def test_real_images_refuse_what_the_classifier_cannot_learn():
    with pytest.raises(ValueError, match="2 train images but 1 train labels"):
        quality.RealImages.from_images(["a", "b"], [gray(0), gray(1)], [0], [], [])
    with pytest.raises(ValueError, match="test label 2 is not a class index 0..1"):
        quality.RealImages.from_images(["a", "b"], [gray(0)], [0], [gray(1)], [2])
    with pytest.raises(ValueError, match="mode must be 'L' or 'RGB'"):
        quality.RealImages(["a"], [gray(0)], [0], [], [], size=28, mode="P")
    with pytest.raises(ValueError, match="at least one training image"):
        quality.RealImages.from_images(["a"], [], [], [], [])


# ------------------------------------------------------------------------------------------------ Frechet distance
def gaussian(mean, variance, count=300, seed=0) -> torch.Tensor:
    """`count` rows whose sample mean is exactly `mean` and sample covariance exactly diag(`variance`) (N - 1)."""
    z = torch.randn(count, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whitened: covariance exactly I
    return torch.tensor(mean, dtype=torch.float64) + z * torch.tensor(variance, dtype=torch.float64).sqrt()


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert abs(quality.frechet_distance(features, features)) < 1e-8 * float(torch.cov(features.T).trace())


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mean_a, var_a = [0.0, 1.0, -2.0, 0.5], [1.0, 4.0, 0.25, 2.0]
    mean_b, var_b = [1.0, 1.0, 0.0, -0.5], [9.0, 1.0, 0.25, 0.5]
    a, b = gaussian(mean_a, var_a, seed=0), gaussian(mean_b, var_b, count=250, seed=1)
    expected = sum((x - y) ** 2 for x, y in zip(mean_a, mean_b)) + sum(
        (math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(var_a, var_b))
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert quality.frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)
    assert quality.frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-5)  # float32 in


class GivenFeatures(torch.nn.Module):
    """A torchmetrics feature extractor that returns its input: the 'images' it is given are the features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def test_frechet_distance_equals_torchmetrics_fid_on_the_same_features():
    fid = pytest.importorskip("torchmetrics.image.fid", reason="pip install torchmetrics (the test extra)")
    g = torch.Generator().manual_seed(0)
    real = torch.randn(120, 8, generator=g) @ torch.randn(8, 8, generator=g) + 0.5
    fake = torch.randn(90, 8, generator=g) * 1.5 - 0.3
    metric = fid.FrechetInceptionDistance(feature=GivenFeatures(8))  # a custom module gets the input unchanged
    for part in real.split(50):  # in batches, as images arrive
        metric.update(part, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    assert expected > 1.0
    assert quality.frechet_distance(fake, real) == pytest.approx(expected, rel=1e-3)


def test_frechet_distance_needs_two_rows_in_each_set_and_the_same_features():
    two = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="features_b has 1"):
        quality.frechet_distance(two, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="features_a has 0"):
        quality.frechet_distance(torch.zeros(0, 3), two)
    with pytest.raises(ValueError, match="3 and 4 features"):
        quality.frechet_distance(two, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"must be \(N, D\)"):
        quality.frechet_distance(torch.zeros(5), two)


# ------------------------------------------------------------------------------------------------ the classifier
def stripes(side: str, count: int, seed: int) -> list:
    """Gray 28x28 images bright in one half (`left` or `right`), with noise: two classes a classifier separates."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 60, (28, 28))
        pixels[:, :14] += 150 if side == "left" else 0
        pixels[:, 14:] += 150 if side == "right" else 0
        images.append(Image.fromarray(pixels.astype(np.uint8)))
    return images


@pytest.fixture(scope="module")
def two_classes():
    # Training images in turn (as after a shuffle: the Frechet floor takes the first ones), held-out ones in order.
    train = [image for pair in zip(stripes("left", 40, seed=0), stripes("right", 40, seed=1)) for image in pair]
    test = stripes("left", 30, seed=2) + stripes("right", 30, seed=3)
    real = quality.RealImages.from_images(["left", "right"], train, [0, 1] * 40, test, [0] * 30 + [1] * 30)
    return real, quality.train_classifier(real, epochs=3, seed=0)


def test_the_classifier_tells_two_classes_apart_and_its_features_keep_them_apart(two_classes):
    real, net = two_classes
    assert not net.training
    report = quality.describe(net, real.test_images, 0.8, real, real.test_labels)
    assert report["matches_requested_class"] > 0.9 and report["recognised_share"] > 0.9
    assert set(report["per_class"]) == {"left", "right"} and len(report["class_histogram"]) == 3  # + "none"
    assert report["class_entropy_bits"] == pytest.approx(1.0, abs=0.05)  # half and half
    left_a, left_b = (quality.classifier_features(net, stripes("left", 30, seed=s), real) for s in (4, 5))
    right = quality.classifier_features(net, stripes("right", 30, seed=6), real)
    assert left_a.shape == (30, quality.NUM_FEATURES) == (30, 128) and (left_a >= 0).all()  # after the ReLU
    same, other = quality.frechet_distance(left_a, left_b), quality.frechet_distance(left_a, right)
    assert same < other / 10, (same, other)


def test_classifier_features_are_the_penultimate_layer_in_eval_mode(two_classes):
    real, net = two_classes
    images = real.test_images[:5]
    net.train()  # dropout on: the features must not see it
    try:
        features = quality.classifier_features(net, images, real, batch_size=2)  # batches of 2, 2, 1
        assert net.training  # left as it was
    finally:
        net.eval()
    with torch.no_grad():
        hidden = net[:-1](quality.as_input(images, real))
        torch.testing.assert_close(features, hidden)
        torch.testing.assert_close(net[-1](features), net(quality.as_input(images, real)))
    assert quality.classifier_features(net, [], real).shape == (0, 128)


def test_the_copy_check_finds_training_images_at_distance_zero(default_dataset):
    train = default_dataset["train"]["image"][:50]
    test = default_dataset["test"]["image"][:4]
    real = quality.RealImages(["garment"], train, [0] * 50, test, [0] * 4, size=28, mode="L")
    reference = quality.copy_reference(train, real)
    shifted = [Image.fromarray(np.roll(np.asarray(image), 3, axis=1)) for image in train[:5]]
    distances = quality.nearest_distances(train[:5] + shifted, reference, real)
    assert (distances[:5] < 1e-3).all()  # zero up to cdist's rounding (it expands |x - y|^2 through a matmul)
    x = quality.as_input(shifted, real).flatten(1)
    expected = torch.cdist(x, reference).min(1).values / 28
    torch.testing.assert_close(distances[5:], expected)
    assert (distances[5:] > 0.05).all()  # a shifted garment is far from every training image
    report = quality.copy_check(reference, real, train[:3])
    assert report["training_images_searched"] == 50 and report["samples"]["median"] < 1e-3
    assert report["held_out_real_images"]["5th_percentile"] > 0.05  # held-out images are no training images


# ---------------------------------------------------------------------------------------------------------- measure
@pytest.fixture
def tiny_measure(model_and_processor, two_classes):
    """`measure` of a random 5x5 class-conditional model (2 classes; other weights than the untrained baseline,
    which is drawn with seed 0) against the two stripe classes."""
    processor = model_and_processor[1]
    model = make_model(seed=1, vocab_size=64, image_size=5, num_classes=2)
    real = two_classes[0]
    seen = []

    def run(**overrides):
        options = dict(num_samples=6, guidance_scales=(1, 2), classifier_epochs=2, batch_size=4,
                       extra_figures=lambda images: seen.append(len(images)) or {"extra": float(len(images))})
        options.update(overrides)
        return quality.measure(model, processor, real, **options)

    return model, real, run, seen


def test_measure_reports_the_frechet_distances_beside_the_classifier_figures(tiny_measure):
    model, real, run, seen = tiny_measure
    model.train()
    state = torch.get_rng_state()
    report = run()
    assert model.training and torch.equal(torch.get_rng_state(), state)  # the caller's mode and random state
    assert seen == [6, 6, 6]  # each scale's samples, then the untrained model's
    assert report["sampling"] == {"temperature": 1.0, "tokens_per_step": 1, "exact": False, "guidance_scale": 1.0,
                                  "seed": 0}
    assert sum(report["real_test_images"]["class_histogram"]) == 60
    assert report["nearest_training_image"]["training_images_searched"] == 80  # the classifier's training images
    frechet = report["frechet_distance"]
    assert frechet["features"] == "the project classifier's 128 penultimate features"
    assert frechet["reference"] == "held-out real images" and frechet["num_images"] == 6
    for key in ("trained_model_samples", "untrained_model_samples"):
        assert report[key]["frechet_distance"] == frechet[key] and report[key]["extra"] == 6.0
        assert sum(report[key]["class_histogram"]) == 6 and "matches_requested_class" in report[key]
    # Real images of the classes sit far closer to the held-out ones than a random model's 5x5 colour noise.
    assert 0 <= frechet["real_training_images"] < min(frechet["trained_model_samples"],
                                                      frechet["untrained_model_samples"]) / 10, frechet
    assert set(report["guidance_curve"]) == {"1.0", "2.0"}
    assert set(report["guidance_curve"]["2.0"]) == {*quality.CURVE_KEYS, "extra"}
    assert report["guidance_curve"]["1.0"]["frechet_distance"] == frechet["trained_model_samples"]


def test_measure_refuses_what_it_cannot_measure_before_any_work(tiny_measure):
    _, real, run, seen = tiny_measure
    with pytest.raises(ValueError, match="num_samples >= 2"):
        run(num_samples=1)
    with pytest.raises(ValueError, match="at least one guidance scale"):
        run(guidance_scales=[])
    with pytest.raises(ValueError, match=r"reference must be .* \(M, 784\)"):
        run(reference=torch.zeros(3, 10))
    one_test_image = quality.RealImages(real.names, real.train_images, real.train_labels, real.test_images[:1],
                                        real.test_labels[:1], size=real.size, mode=real.mode)
    with pytest.raises(ValueError, match="at least 2 held-out real images"):
        quality.measure(None, None, one_test_image)
    assert seen == []
