"""examples/sample_quality.py: one tiny end-to-end pass (the real figures come from the default run)."""

import json
import math
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pixelgpt import quality, training

from conftest import REPO_ROOT, parse_error

sys.path.insert(0, str(REPO_ROOT / "examples"))
import sample_quality  # noqa: E402


def test_reports_confidence_for_real_trained_and_untrained_samples(tmp_path):
    training.main(training.parse_args([
        "--output_dir", str(tmp_path / "model"), "--hidden_size", "32", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--max_train_steps", "2", "--max_eval_samples", "16", "--max_train_samples",
        "64", "--class_conditional", "--num_samples", "2", "--quality_samples", "0"]))  # two stages, unjudged
    report = sample_quality.main(sample_quality.build_parser().parse_args(
        ["--model", str(tmp_path / "model"), "--num_samples", "10", "--classifier_epochs", "2",
         "--classifier_train_images", "1000", "--guidance_scale", "1", "3", "--output", str(tmp_path / "report.json")]))
    assert (tmp_path / "report.json").exists()
    assert report["classifier_test_accuracy"] > 0.5  # real images: far above the 0.1 of chance
    for key in ("trained_model_samples", "untrained_model_samples"):
        part = report[key]
        assert sum(part["class_histogram"]) == 10 and 0 <= part["recognised_share"] <= 1
        assert 0 <= part["class_entropy_bits"] <= 3.33
        assert 0 <= part["matches_requested_class"] <= 1  # class-conditional model: requested labels 0..9
    assert set(report["guidance_curve"]) == {"1.0", "3.0"} and report["sampling"]["guidance_scale"] == 1.0
    assert report["guidance_curve"]["1.0"]["matches_requested_class"] == (
        report["trained_model_samples"]["matches_requested_class"])
    assert sum(report["real_test_images"]["class_histogram"]) == 1000
    assert len(report["real_test_images"]["class_histogram"]) == 11  # 10 garments + "not clothing"
    assert report["real_test_images"]["class_entropy_bits"] > 3.0  # the balanced test set: close to log2(10)
    copies = report["nearest_training_image"]
    assert copies["training_images_searched"] == 1000  # the classifier's training images
    for part in ("samples", "held_out_real_images"):  # no test image repeats a training image exactly
        assert 0 < copies[part]["5th_percentile"] <= copies[part]["median"] <= 1
    frechet = report["frechet_distance"]
    assert frechet["num_images"] == 10 and frechet["reference"] == "held-out real images"
    for key in ("trained_model_samples", "untrained_model_samples"):
        assert report[key]["frechet_distance"] == frechet[key]
    assert all(math.isfinite(entry["frechet_distance"]) for entry in report["guidance_curve"].values())
    # Two training steps leave the model as good as untrained (trained < untrained needs a trained model); real
    # garments sit far closer to the held-out garments than either model's samples.
    assert 0 <= frechet["real_training_images"] < min(frechet["trained_model_samples"],
                                                      frechet["untrained_model_samples"]) / 2, frechet


def test_fewer_than_two_samples_are_refused():
    message = parse_error(sample_quality.build_parser().parse_args, ["--model", "unused", "--num_samples", "1"])
    assert "--num_samples: must be at least 2" in message


def test_nearest_dataset_searches_that_datasets_whole_training_split(tmp_path, default_dataset):
    folder = tmp_path / "data"
    folder.mkdir()
    default_dataset["train"].select(range(40)).to_parquet(str(folder / "train.parquet"))
    default_dataset["test"].select(range(10)).to_parquet(str(folder / "test.parquet"))
    real = quality.RealImages(["garment"], default_dataset["train"]["image"][:5], [0] * 5,
                              default_dataset["test"]["image"][:4], [0] * 4, size=28, mode="L")
    args = sample_quality.build_parser().parse_args(["--model", "unused", "--nearest_dataset", str(folder)])
    samples = default_dataset["train"]["image"][30:33]  # in the dataset, not among the classifier's 5
    reference = sample_quality.training_reference(args, real, see=lambda images: images)
    report = quality.copy_check(reference, real, samples)
    assert report["training_images_searched"] == 40
    assert report["samples"]["median"] < 1e-3 and report["samples"]["5th_percentile"] < 1e-3
    assert report["held_out_real_images"]["5th_percentile"] > 0.05


def test_a_class_folder_is_split_as_train_py_split_it(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("noise", "flat"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(30):
            flat = np.full((16, 16, 3), 8 * i, np.uint8)
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) if name == "noise" else flat
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    folder = ["--train_data_dir", str(tmp_path / "imgs"), "--eval_fraction", "0.2"]
    training.main(training.parse_args([*folder, "--output_dir", str(tmp_path / "model"), "--resolution", "8",
                                       "--quantization", "rgb", "--num_levels", "4", "--class_conditional",
                                       "--max_train_steps", "2", "--hidden_size", "32", "--num_hidden_layers", "1",
                                       "--num_attention_heads", "2", "--train_batch_size", "4", "--num_samples", "2"]))
    report = sample_quality.main(sample_quality.build_parser().parse_args(
        ["--model", str(tmp_path / "model"), *folder, "--num_samples", "4", "--classifier_epochs", "3"]))
    real = report["real_test_images"]
    assert sum(real["class_histogram"]) == 12  # the 20% train.py held out of 60
    assert set(real["per_class"]) == {"noise", "flat"}


# ------------------------------------------------------------------------------------------------------------ FID
def fid_packages():
    """Skip where torchmetrics / torch-fidelity cannot be imported (the `fid` and `test` extras install them)."""
    try:
        import torch_fidelity  # noqa: F401
        import torchmetrics.image.fid  # noqa: F401
    except (ImportError, RuntimeError) as err:
        pytest.skip(f"FID packages not importable here ({type(err).__name__}: {err}): pip install torchmetrics "
                    "torch-fidelity")


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A weights file of torch-fidelity's Inception-v3 with random weights (the real file cannot be downloaded
    here): the layers, names and shapes FID loads, with He-initialised convolutions so that features neither vanish
    nor explode through the 94 layers."""
    fid_packages()
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    torch.manual_seed(0)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / sample_quality.INCEPTION_WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return path


def fid_args(*extra):
    return sample_quality.build_parser().parse_args(["--model", "unused", *extra])


def images(kind, count=8, size=12, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "black":
        return [Image.new("L", (size, size)) for _ in range(count)]
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


class PooledColours(torch.nn.Module):
    """Stand-in features for where torch-fidelity (and the torchvision it needs) cannot be installed, as on CI with
    the CPU build of torch: 2x2 pooled colours and per-channel spread. torchmetrics' FID arithmetic is the same."""

    num_features = 15

    def forward(self, x):  # (B, 3, H, W) uint8
        x = x.float() / 255
        return torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.flatten(2).std(2)], dim=1)  # (B, 15)


@pytest.fixture(params=["inception", "stand-in"])
def fid_metric(request, tmp_path):
    """Build the FID metric as --fid does: on torch-fidelity's Inception network with random weights, or on the
    stand-in features (torchmetrics only), so that CI runs the FID code whatever can be installed."""
    if request.param == "stand-in":
        pytest.importorskip("torchmetrics", reason="pip install torchmetrics")
        from torchmetrics.image.fid import FrechetInceptionDistance

        return lambda args: FrechetInceptionDistance(feature=PooledColours(), reset_real_features=False)
    weights = request.getfixturevalue("random_inception_weights")
    return lambda args: sample_quality.fid_metric(sample_quality.build_parser().parse_args(
        ["--model", "unused", "--fid", "--inception_weights", str(weights), "--fid_features", "64"]))


def test_fid_is_zero_for_a_set_against_itself_and_large_for_other_images(fid_metric):
    metric = fid_metric(None)
    noise = images("noise")
    fid = sample_quality.FID(metric, noise, size=12, batch_size=5)  # batches of 5 + 3: the sums add up
    same, other_noise, black = fid(noise), fid(images("noise", seed=1)), fid(images("black"))
    assert all(math.isfinite(v) for v in (same, other_noise, black))
    assert abs(same) < 1e-4 and black > 1.0 and black > 10 * other_noise, (same, other_noise, black)
    assert fid(noise) == pytest.approx(same, abs=1e-6)  # the reference features stay from call to call


def test_fid_in_the_report_of_a_trained_model(tmp_path, fid_metric):
    training.main(training.parse_args([
        "--output_dir", str(tmp_path / "model"), "--hidden_size", "32", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--max_train_steps", "2", "--max_eval_samples", "16", "--max_train_samples",
        "64", "--num_samples", "2"]))
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"read by fid_metric only")
    with mock.patch.object(sample_quality, "fid_metric", fid_metric):
        report = sample_quality.main(sample_quality.build_parser().parse_args(
            ["--model", str(tmp_path / "model"), "--num_samples", "8", "--classifier_epochs", "1",
             "--classifier_train_images", "200", "--fid", "--inception_weights", str(weights), "--fid_features",
             "64", "--fid_reference_images", "8", "--output", str(tmp_path / "report.json")]))
    fid = json.loads((tmp_path / "report.json").read_text())["fid"]
    assert fid["features"] == 64 and fid["num_reference_images"] == 8 and fid["num_images"] == 8
    assert report["trained_model_samples"]["fid"] == fid["trained_model_samples"]
    assert report["untrained_model_samples"]["fid"] == fid["untrained_model_samples"]
    assert all(math.isfinite(fid[k]) for k in ("trained_model_samples", "untrained_model_samples",
                                               "real_training_images"))
    # Real garments are closer to held-out garments than an untrained model's noise.
    assert fid["real_training_images"] < fid["untrained_model_samples"], fid
    frechet = report["frechet_distance"]  # the classifier's features, beside Inception's
    assert frechet["num_images"] == 8 and frechet["real_training_images"] < frechet["untrained_model_samples"]


def test_fid_says_what_is_missing_before_any_work(tmp_path):
    with pytest.raises(sample_quality.FIDError) as info:
        sample_quality.main(fid_args("--fid"))
    message = str(info.value)
    assert "--inception_weights" in message and sample_quality.INCEPTION_WEIGHTS_NAME in message
    assert "never downloads" in message and sample_quality.INCEPTION_WEIGHTS_URL in message
    with pytest.raises(sample_quality.FIDError, match="no such file"):
        sample_quality.main(fid_args("--fid", "--inception_weights", str(tmp_path / "missing.pth")))
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not a weights file")
    with mock.patch.dict(sys.modules, {"torch_fidelity": None}), \
            pytest.raises(sample_quality.FIDError, match="pip install torchmetrics torch-fidelity"):
        sample_quality.main(fid_args("--fid", "--inception_weights", str(weights)))
    with pytest.raises(sample_quality.FIDError, match="only with --fid"):
        sample_quality.main(fid_args("--inception_weights", str(weights)))


def test_fid_refuses_a_file_that_is_not_the_inception_network(tmp_path):
    fid_packages()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a weights file")
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    for path in (garbage, other):
        with pytest.raises(sample_quality.FIDError, match="is not the Inception-v3 FID network") as info:
            sample_quality.fid_metric(fid_args("--fid", "--inception_weights", str(path)))
        assert sample_quality.INCEPTION_WEIGHTS_NAME in str(info.value)


def test_the_script_ends_with_one_line_naming_the_weights_file():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "sample_quality.py"), "--model", "unused",
                             "--fid"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("sample_quality.py: error: --fid needs --inception_weights PATH")
    assert sample_quality.INCEPTION_WEIGHTS_NAME in result.stderr
