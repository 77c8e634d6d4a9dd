"""pixelgpt.training end to end (what examples/train.py and `pixelgpt train` run): tiny runs on the built-in real
data and on small folders, seconds each. Runs that serve several checks are trained once per module; what one
function owns is tested on that function in test_training_<module>.py."""

import json
import shutil
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from training_helpers import (
    TINY,
    add_bad_images,
    assert_pushed,
    assert_same_weights,
    checkpoint_names,
    crash_after_saving,
    fake_hub,
    fresh_accelerate_state,
    launch_two_cpu_processes,
    make_folder,
    train,
    weights,
)
from transformers import AutoModel

from pixelgpt import PixelGPTImageProcessor, training
from pixelgpt.modeling import layouts_pixelgpt
from pixelgpt.training import loop
from pixelgpt.training import pixelgpt as pixelgpt_training
from pixelgpt.training.workspace import LOCK_NAME
from pixelgpt.utils import TrainingError

from conftest import REPO_ROOT, assert_honest_card, assert_nearest_enlargement, one_cpu_thread

one_thread = pytest.fixture(scope="module", autouse=True)(one_cpu_thread)
fresh_state = pytest.fixture(autouse=True)(fresh_accelerate_state)


def results(folder) -> dict:
    return json.loads((Path(folder) / "eval_results.json").read_text())


# ------------------------------------------------------------------------------------------------ the default run
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """3 steps on the built-in data with a moving average, a checkpoint each step, pushed to a fake Hub."""
    tmp_path = tmp_path_factory.mktemp("default")
    with fake_hub("someone/pixelgpt-test") as (calls, _):
        out = train(tmp_path, "--max_train_steps", "3", "--use_ema", "--checkpointing_steps", "1", "--push_to_hub",
                    "--hub_model_id", "someone/pixelgpt-test", "--hub_token", "hf_secret_token")
    return out, calls


def test_default_data_run_produces_model_card_and_samples(default_run):
    out, _ = default_run
    model = AutoModel.from_pretrained(out)
    images = model.generate_images(2, generator=torch.Generator().manual_seed(0), show_progress=False)
    assert images[0].size == (8, 8) and images[0].mode == "L"
    grid = Image.open(out / "samples.png")
    assert grid.size == (4 * 9 + 1, 9 + 1)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "unconditional-image-generation"
    assert data["datasets"] == ["zalando-datasets/fashion_mnist"] and data["metrics"] == ["bits_per_token"]
    assert "pixelgpt" in data["tags"]
    figures = results(out)
    assert figures["steps"] == 3
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == round(figures["bits_per_token"], 4)
    assert "trust_remote_code=True" in card.text and "![samples](samples_large.png)" in card.text
    assert str(out.parent) not in card.content and "/tmp" not in card.content
    # The card shows the grid enlarged with nearest neighbour (37 -> 518 pixels), links nowhere, names no path;
    # every held-out figure is in its YAML.
    assert_honest_card(out, str(out.parent))
    assert_nearest_enlargement(out / "samples_large.png", out / "samples.png")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        name: round(figures[name], 4) for name in ("bits_per_token", "untrained_bits_per_token")}
    assert {"modeling_pixelgpt.py", "configuration_pixelgpt.py", "image_processing_pixelgpt.py"} <= \
        {p.name for p in out.iterdir()}


def test_push_to_hub_uploads_the_model_folder_without_checkpoints(default_run):
    out, calls = default_run
    assert_pushed(out, calls, "someone/pixelgpt-test", "hf_secret_token", [
        "model.safetensors", "config.json", "preprocessor_config.json", "README.md", "samples.png",
        "modeling_pixelgpt.py", "configuration_pixelgpt.py", "image_processing_pixelgpt.py"])


def test_short_run_on_real_images_beats_the_untrained_model(tmp_path):
    out = train(tmp_path, "--max_train_steps", "200", "--learning_rate", "3e-3", "--quantization", "gray8",
                "--max_train_samples", "1024", "--train_batch_size", "16")
    figures = results(out)
    assert figures["untrained_bits_per_dim"] > 7.0  # ~log2(256) for a uniform guess
    # 200 steps bring a 1-layer model from ~8 to ~5.2 bits/dim on held-out images (measured).
    assert figures["bits_per_dim"] < 0.75 * figures["untrained_bits_per_dim"], figures


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A palette, accumulation, bf16 and tensorboard run, given a Hub token (never pushed)."""
    return train(tmp_path_factory.mktemp("logged"), "--max_train_steps", "4", "--fit_palette", "--palette_size", "6",
                 "--palette_samples", "32", "--gradient_accumulation_steps", "2", "--mixed_precision", "bf16",
                 "--report_to", "tensorboard", "--logging_steps", "1", "--sample_steps", "2", "--checkpointing_steps",
                 "1", "--hub_token", "hf_SeCrEtToKeN1234567890")


def test_palette_accumulation_bf16_and_tensorboard_logging(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    processor = PixelGPTImageProcessor.from_pretrained(logged_run)
    assert processor.quantization == "palette" and len(processor.palette) == 6
    assert AutoModel.from_pretrained(logged_run).config.vocab_size == 6
    events = EventAccumulator(str(logged_run / "logs" / "pixelgpt"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4]


def test_the_hub_token_reaches_no_tracker_log_card_or_file(logged_run):
    files = [f for f in logged_run.rglob("*") if f.is_file()]
    assert any("events.out.tfevents" in f.name for f in files) and any(f.name == "hparams.yml" for f in files)
    assert any(f.parent.name.startswith("checkpoint-") for f in files)
    assert [f for f in files if b"hf_SeCrEtToKeN1234567890" in f.read_bytes()] == []


# --------------------------------------------------------------------------------------------------- resuming
RESUMED = ["--max_train_steps", "10", "--checkpointing_steps", "5", "--checkpoints_total_limit", "5",
           "--class_conditional", "--use_ema", "--ema_decay", "0.9", "--parallel_tokens", "3"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (class-conditional, EMA, 3-ahead prediction) that resumed runs must equal."""
    return train(tmp_path_factory.mktemp("straight"), *RESUMED)


def test_resumed_run_ends_with_the_same_weights(tmp_path, straight):
    # 64 images / batch 8 = 8 steps per epoch: the run crosses epochs, and the crash happens mid-epoch.
    with mock.patch.object(loop, "save_checkpoint", crash_after_saving(loop.save_checkpoint)), \
            pytest.raises(KeyboardInterrupt):
        train(tmp_path, *RESUMED)
    assert checkpoint_names(tmp_path / "out") == ["checkpoint-5"]
    train(tmp_path, *RESUMED, "--resume_from_checkpoint", "latest")
    assert_same_weights(weights(tmp_path / "out"), weights(straight))
    assert checkpoint_names(tmp_path / "out") == ["checkpoint-5", "checkpoint-10"]


def test_parallel_tokens_trains_a_model_that_draws_k_tokens_per_pass(straight):
    model = AutoModel.from_pretrained(straight)
    assert model.config.parallel_tokens == 3
    figures = results(straight)
    assert figures["bits_per_token_3_ahead"] > 0
    assert "3-ahead" in (straight / "README.md").read_text()
    yaml = {r.metric_type: r.metric_value for r in ModelCard.load(straight / "README.md").data.eval_results}
    assert yaml["bits_per_token_3_ahead"] == round(figures["bits_per_token_3_ahead"], 4)
    images = model.generate_images(1, class_labels=[0, 1, 2], tokens_per_step=3,
                                   generator=torch.Generator().manual_seed(0), show_progress=False)
    assert len(images) == 3 and images[0].size == (8, 8)


def test_resuming_a_finished_run_trains_no_further_step(tmp_path, straight):
    shutil.copytree(straight, tmp_path / "out")  # its last checkpoint is its last step
    # One checkpoint too many, as a run killed between a save and its rotation leaves: the run ends within the limit.
    shutil.copytree(tmp_path / "out" / "checkpoint-5", tmp_path / "out" / "checkpoint-3")
    steps = []
    original = pixelgpt_training.task_loss

    def spy(model, accelerator, batch, *args, reduction="mean", **kwargs):
        if reduction == "mean":  # training steps (evaluation uses reduction="none")
            steps.append(1)
        return original(model, accelerator, batch, *args, reduction=reduction, **kwargs)

    with mock.patch.object(pixelgpt_training, "task_loss", spy):
        train(tmp_path, *RESUMED, "--resume_from_checkpoint", "latest", "--checkpoints_total_limit", "2")
    assert steps == [] and results(tmp_path / "out")["steps"] == 10
    assert checkpoint_names(tmp_path / "out") == ["checkpoint-5", "checkpoint-10"]
    assert_same_weights(weights(tmp_path / "out"), weights(straight))


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"Training diverged at step \d+: the loss is nan.*last good checkpoint "
                                            r"is checkpoint-2"):
        train(tmp_path, "--max_train_steps", "6", "--checkpointing_steps", "2", "--learning_rate", "1e30")
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists()  # no NaN model as the result
    assert checkpoint_names(out) == ["checkpoint-2"]
    for tensor in load_file(str(out / "checkpoint-2" / "model.safetensors")).values():
        assert tensor.isfinite().all()
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------------ folders, labels
def folder_run(tmp_path, root, *extra, name="out"):
    return train(tmp_path, "--train_data_dir", str(root), "--max_train_steps", "1", "--train_batch_size", "2", *extra,
                 name=name)


def test_image_folder_with_class_subfolders_trains_class_conditionally_decoding_images_as_batches_are_made(
        tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 20)
    opened = []
    real = training.data.open_image
    monkeypatch.setattr(training.data, "open_image", lambda value, where: opened.append(value) or real(value, where))
    out = folder_run(tmp_path, root, "--class_conditional", "--quantization", "rgb", "--num_levels", "4",
                     "--eval_split", "train", "--max_eval_samples", "2", "--num_samples", "1")
    # 40 images: the 2 held out (checked, then evaluated), the 2 of the one training batch and the 2 of the next
    # one (accelerate reads a batch ahead); nothing read the other 34.
    assert len({value["path"] for value in opened}) <= 6, opened
    model = AutoModel.from_pretrained(out)
    assert model.config.num_classes == 2 and model.config.id2label == {0: "cats", 1: "dogs"}
    assert model.config.class_embedding  # the class reaches every row by default
    assert ModelCard.load(out / "README.md").data.to_dict().get("datasets") is None


def test_labels_are_read_only_when_used_and_a_local_dataset_path_stays_off_the_card(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    local = tmp_path / "my" / "private" / "dataset"
    local.mkdir(parents=True)
    images = [np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8) for i in range(20)]
    Dataset.from_dict({"image": images, "label": ["cat", "dog"] * 10},  # labels no class-conditional run could use
                      features=Features({"image": ImageFeature(), "label": Value("string")})).to_parquet(
        str(local / "train.parquet"))
    with mock.patch.object(pixelgpt_training, "resolve_label_column", side_effect=AssertionError("labels read")):
        out = train(tmp_path, "--dataset_name", str(local), "--max_train_steps", "1", "--train_batch_size", "4")
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and "private" not in card
    assert ModelCard.load(out / "README.md").data.datasets is None


# ---------------------------------------------------------------------------------------------- transformation tasks
def test_inpaint_task_learns_random_orders_and_inpaints_after_loading(tmp_path):
    original, probabilities = layouts_pixelgpt.random_boxes, []

    def spy(batch, image_size, probability, generator, device, sides):
        probabilities.append((probability, sides))
        return original(batch, image_size, probability, generator, device, sides)

    with mock.patch.object(layouts_pixelgpt, "random_boxes", spy):
        out = train(tmp_path, "--task", "inpaint", "--max_train_steps", "40", "--learning_rate", "3e-3",
                    "--inpaint_box_probability", "0.25", "--inpaint_box_sides", "0.25", "0.75")
    assert probabilities.count((0.25, (0.25, 0.75))) == 40  # every training step used random orders and the sides
    figures = results(out)
    assert figures["bits_per_token"] < 0.8 * figures["untrained_bits_per_token"], figures
    model = AutoModel.from_pretrained(out)
    assert model.config.task == "inpaint" and model.config.inpaint_fill_order == "raster"
    image = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    filled = np.asarray(model.inpaint_images(image, mask, show_progress=False)[0])
    quantized = np.asarray(model.image_processor.decode(model.image_processor(image).input_ids)[0])
    assert np.array_equal(filled[~mask], quantized[~mask])


def test_colorize_task_on_a_colour_folder(tmp_path):
    root = make_folder(tmp_path / "imgs")
    out = folder_run(tmp_path, root, "--task", "colorize", "--quantization", "rgb", "--num_levels", "4",
                     "--eval_fraction", "0.3")
    model = AutoModel.from_pretrained(out)
    processor = PixelGPTImageProcessor.from_pretrained(out)
    settings = (model.config.task, processor.condition_quantization, model.config.condition_size)
    assert settings == ("colorize", "gray8", 8)
    assert model.config.condition_vocab_size == processor.condition_vocab_size == 256
    colour = model.colorize_images(Image.new("L", (8, 8), 128), num_samples=2, show_progress=False)
    assert [c.mode for c in colour] == ["RGB", "RGB"] and colour[0].size == (8, 8)
    assert Image.open(out / "samples.png").size == (4 * 9 + 1, 9 + 1)  # 2 (gray input, colour output) pairs


def test_upscale_task_reads_a_quarter_resolution_condition(tmp_path):
    out = train(tmp_path, "--task", "upscale", "--quantization", "gray8", "--max_train_steps", "2")
    model = AutoModel.from_pretrained(out)
    assert (model.config.task, model.config.condition_size) == ("upscale", 2)
    assert model.config.aligned_condition and model.config.condition_prefix  # both by default
    big = model.upscale_images(np.zeros((2, 2), dtype=np.uint8), show_progress=False)[0]
    assert big.size == (8, 8)


def test_translate_task_pairs_folders_by_file_name(tmp_path):
    targets = make_folder(tmp_path / "targets")
    sources = tmp_path / "sources"
    for path in targets.rglob("*.png"):
        relative = path.relative_to(targets)
        (sources / relative.parent).mkdir(parents=True, exist_ok=True)
        flipped = Image.open(path).convert("L").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flipped.save(sources / relative.with_suffix(".bmp"))
    out = folder_run(tmp_path, targets, "--task", "translate", "--source_dir", str(sources), "--quantization", "rgb",
                     "--num_levels", "4")
    model = AutoModel.from_pretrained(out)
    assert model.config.task == "translate" and model.image_processor is None
    translated = model.translate_images(Image.new("L", (8, 8)), show_progress=False,
                                        generator=torch.Generator().manual_seed(0))
    assert translated[0].mode == "RGB"


# ----------------------------------------------------------------------------------------------------- streaming
def test_a_streamed_folder_trains_and_a_resumed_stream_ends_with_the_same_weights(tmp_path):
    root = add_bad_images(make_folder(tmp_path / "imgs", sizes=((12, 12),) * 12))
    # 27 images: the first 4 (good) are held out, 23 train (3 bad, skipped) in passes of 6 batches (the last of 3
    # images); step 8 is inside the second pass.
    common = ["--train_data_dir", str(root), "--streaming", "--shuffle_buffer_size", "8", "--max_eval_samples", "4",
              "--train_batch_size", "4", "--max_train_steps", "10", "--checkpointing_steps", "4",
              "--checkpoints_total_limit", "0", "--class_conditional", "--skip_bad_images"]
    straight = train(tmp_path, *common, name="straight")
    model = AutoModel.from_pretrained(straight)
    assert model.config.num_classes == 2  # the labels' ClassLabel, known without reading the stream
    assert "trained on images streamed from local files" in (straight / "README.md").read_text()
    with mock.patch.object(loop, "save_checkpoint", crash_after_saving(loop.save_checkpoint, at_step=8)), \
            pytest.raises(KeyboardInterrupt):
        train(tmp_path, *common, name="resumed")
    saved = json.loads((tmp_path / "resumed" / "checkpoint-8" / "pixelgpt_step.json").read_text())
    assert saved["data"]["positions"] == [[1, 2]]  # pass 1, two batches into it
    assert len(saved["data"]["bad_images"]) == 3  # the whole first pass was read
    train(tmp_path, *common, "--resume_from_checkpoint", "latest", name="resumed")
    assert_same_weights(weights(tmp_path / "resumed"), weights(straight))
    for out in (straight, tmp_path / "resumed"):  # the resumed run kept the count of the images skipped before
        assert results(out)["skipped_train_images"] == 3
        assert len((out / "skipped_train_images.txt").read_text().splitlines()) == 3


# -------------------------------------------------------------------------------- several processes (accelerate)
RANK_DUMP = """
    import runpy, sys
    from accelerate import Accelerator
    from safetensors.torch import save_file

    free_memory = Accelerator.free_memory

    def dump_then_free(self, *objects):
        if self._models:  # each rank's own copy of the trained weights, before training releases it
            model = self.unwrap_model(self._models[0])
            save_file({{k: v.contiguous() for k, v in model.state_dict().items()}},
                      f"{out}/rank{{self.process_index}}.safetensors")
        return free_memory(self, *objects)

    Accelerator.free_memory = dump_then_free
    runpy.run_path({script!r}, run_name="__main__")  # the example script, as `accelerate launch` runs it
"""


@pytest.mark.slow
def test_the_example_script_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    """examples/train.py is the accelerate-launchable face of pixelgpt.training: launched as a user would."""
    script = tmp_path / "launch_train.py"
    script.write_text(textwrap.dedent(RANK_DUMP.format(out=str(tmp_path), script=str(REPO_ROOT / "examples" /
                                                                                     "train.py"))))
    common = [*TINY, "--max_train_steps", "4", "--eval_steps", "100", "--sample_steps", "100"]
    launch_two_cpu_processes(script, "--output_dir", tmp_path / "ddp", *common, "--train_batch_size", "4")
    assert results(tmp_path / "ddp")["steps"] == 4
    assert AutoModel.from_pretrained(tmp_path / "ddp").config.image_size == 8
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert_same_weights(rank0, rank1)  # gradients were synchronised
    single = train(tmp_path, *common, "--train_batch_size", "8", name="single")
    assert_same_weights(weights(tmp_path / "ddp"), weights(single), rtol=1e-4, atol=1e-6)


STREAM_SEEN = """
    import os, sys
    from pixelgpt import training
    from pixelgpt.training import data
    read = data.read_image
    def logged(value, where, *rest):
        kind = "held" if where.startswith("eval") else "seen"  # held-out rows are checked as eval[i] first
        with open(os.path.join({out!r}, kind + "-" + os.environ["RANK"] + ".txt"), "a") as f:
            f.write(value["path"] + "\\n")
        return read(value, where, *rest)
    data.read_image = logged
    training.main(training.parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_streaming_cpu_processes_read_disjoint_parts(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 12)
    script = tmp_path / "launch_stream.py"
    script.write_text(textwrap.dedent(STREAM_SEEN.format(out=str(tmp_path))))
    # 4 held out, 20 streamed: each process reads its 10 in passes of 2 batches of 4 (3 steps: one pass and a bit).
    launch_two_cpu_processes(script, "--output_dir", tmp_path / "ddp", *TINY, "--train_data_dir", root, "--streaming",
                             "--max_train_steps", "2", "--train_batch_size", "4", "--max_eval_samples", "4")
    held = set((tmp_path / "held-0.txt").read_text().split())
    assert len(held) == 4 and held == set((tmp_path / "held-1.txt").read_text().split())
    # What each process trained on (it also evaluated on its share of the held-out images).
    seen = [set((tmp_path / f"seen-{rank}.txt").read_text().split()) - held for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 8  # two batches of 4 each, all different
    assert not seen[0] & seen[1]
    assert (tmp_path / "ddp" / "model.safetensors").exists()



def test_too_few_held_out_images_to_judge_by_skip_the_measurement_not_the_run(tmp_path, caplog):
    out = train(tmp_path, "--max_train_steps", "1", "--class_conditional", "--max_eval_samples", "1")
    assert (out / "model.safetensors").exists() and not (out / "sample_quality.json").exists()
    assert "--quality_samples: skipped" in caplog.text and "held-out" in caplog.text
