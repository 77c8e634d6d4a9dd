"""examples/sample_quality.py: one tiny end-to-end pass (the real figures come from the default run)."""

import sys

from pixelgpt import training

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "examples"))
import sample_quality  # noqa: E402


def test_reports_confidence_for_real_trained_and_untrained_samples(tmp_path):
    training.main(training.parse_args([
        "--output_dir", str(tmp_path / "model"), "--hidden_size", "32", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--max_train_steps", "2", "--max_eval_samples", "16", "--max_train_samples",
        "64", "--class_conditional", "--num_samples", "2"]))
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
