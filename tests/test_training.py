"""pixelgpt.training (what examples/train.py and `pixelgpt train` run): end-to-end runs on the built-in real data
with tiny settings (seconds each)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

from pixelgpt import PixelGPTImageProcessor, training
from pixelgpt.modeling import layouts_pixelgpt
from pixelgpt.utils import TrainingError, image_key

from conftest import REPO_ROOT, assert_honest_card, assert_nearest_enlargement, one_cpu_thread, parse_error

TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--resolution", "8",
        "--max_train_samples", "64", "--max_eval_samples", "32", "--train_batch_size", "8", "--eval_batch_size", "16",
        "--num_samples", "4", "--lr_warmup_steps", "2"]

one_thread = pytest.fixture(scope="module", autouse=True)(one_cpu_thread)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one state per process; each main() here stands for a separate run."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(tmp_path, *extra, name="out"):
    AcceleratorState._reset_state(reset_partial_state=True)
    args = training.parse_args(["--output_dir", str(tmp_path / name), *TINY, *extra])
    training.main(args)
    return tmp_path / name



def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a, b, **tolerance):
    assert a.keys() == b.keys()
    for key in a:
        difference = (a[key].double() - b[key].double()).abs().max().item()
        torch.testing.assert_close(a[key], b[key], **(tolerance or dict(rtol=0, atol=0)),
                                   msg=f"{key}: largest difference {difference:.3g}")


def test_help_documents_every_argument():
    with mock.patch.object(sys, "argv", ["train.py", "--help"]), pytest.raises(SystemExit) as exit_info:
        training.parse_args()
    assert exit_info.value.code == 0
    undocumented = [a.dest for a in training.build_parser()._actions if a.dest != "help" and not a.help]
    assert undocumented == []


def test_default_data_run_produces_model_card_and_samples(tmp_path):
    out = run(tmp_path, "--max_train_steps", "3", "--use_ema")
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
    results = json.loads((out / "eval_results.json").read_text())
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == round(results["bits_per_token"], 4)
    assert "trust_remote_code=True" in card.text and "![samples](samples_large.png)" in card.text
    assert str(tmp_path) not in card.content and "/tmp" not in card.content
    # The card shows the grid enlarged with nearest neighbour (37 -> 518 pixels), links nowhere, names no path;
    # every held-out figure is in its YAML.
    assert_honest_card(out, str(tmp_path))
    assert_nearest_enlargement(out / "samples_large.png", out / "samples.png")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        name: round(results[name], 4) for name in ("bits_per_token", "untrained_bits_per_token")}
    assert {"modeling_pixelgpt.py", "configuration_pixelgpt.py", "image_processing_pixelgpt.py"} <= \
        {p.name for p in out.iterdir()}


def test_short_run_on_real_images_beats_the_untrained_model(tmp_path):
    out = run(tmp_path, "--max_train_steps", "200", "--learning_rate", "3e-3", "--quantization", "gray8",
              "--max_train_samples", "1024", "--train_batch_size", "16")
    results = json.loads((out / "eval_results.json").read_text())
    assert results["untrained_bits_per_dim"] > 7.0  # ~log2(256) for a uniform guess
    # 200 steps bring a 1-layer model from ~8 to ~5.2 bits/dim on held-out images (measured).
    assert results["bits_per_dim"] < 0.75 * results["untrained_bits_per_dim"], results


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    # 64 images / batch 8 = 8 steps per epoch: the run crosses epochs, and the crash happens mid-epoch.
    common = ["--max_train_steps", "12", "--checkpointing_steps", "5", "--checkpoints_total_limit", "5",
              "--class_conditional", "--use_ema", "--ema_decay", "0.9", "--parallel_tokens", "3"]
    straight = run(tmp_path, *common, name="straight")

    crash_after = training.save_checkpoint

    def save_then_crash(accelerator, args, step, ema, settings, data_state):
        path = crash_after(accelerator, args, step, ema, settings, data_state)
        raise KeyboardInterrupt(f"simulated interruption after {path.name}")

    with mock.patch.object(training, "save_checkpoint", save_then_crash), pytest.raises(KeyboardInterrupt):
        run(tmp_path, *common, name="resumed")
    assert [p.name for p in training.list_checkpoints(tmp_path / "resumed")] == ["checkpoint-5"]
    run(tmp_path, *common, "--resume_from_checkpoint", "latest", name="resumed")
    assert_same_weights(weights(tmp_path / "resumed"), weights(straight))
    assert [p.name for p in training.list_checkpoints(tmp_path / "resumed")] == ["checkpoint-5", "checkpoint-10"]


def test_palette_accumulation_bf16_and_tensorboard_logging(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run(tmp_path, "--max_train_steps", "4", "--fit_palette", "--palette_size", "6", "--palette_samples", "32",
              "--gradient_accumulation_steps", "2", "--mixed_precision", "bf16", "--report_to", "tensorboard",
              "--logging_steps", "1", "--sample_steps", "2")
    processor = PixelGPTImageProcessor.from_pretrained(out)
    assert processor.quantization == "palette" and len(processor.palette) == 6
    assert AutoModel.from_pretrained(out).config.vocab_size == 6
    events = EventAccumulator(str(out / "logs" / "pixelgpt"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4]


def test_parallel_tokens_trains_a_model_that_draws_k_tokens_per_pass(tmp_path):
    out = run(tmp_path, "--max_train_steps", "6", "--parallel_tokens", "4", "--parallel_fraction", "0.5")
    model = AutoModel.from_pretrained(out)
    assert model.config.parallel_tokens == 4
    results = json.loads((out / "eval_results.json").read_text())
    assert results["bits_per_token_4_ahead"] > 0
    assert "4-ahead" in (out / "README.md").read_text()
    yaml = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert yaml["bits_per_token_4_ahead"] == round(results["bits_per_token_4_ahead"], 4)
    images = model.generate_images(3, tokens_per_step=4, generator=torch.Generator().manual_seed(0),
                                   show_progress=False)
    assert len(images) == 3 and images[0].size == (8, 8)


def test_checkpoint_rotation_keeps_the_newest(tmp_path):
    out = run(tmp_path, "--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2")
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]


CRASH_DURING_SAVE = """
    import os, sys
    from pixelgpt import training
    from accelerate import Accelerator
    original = Accelerator.save_state

    def dying_save(self, output_dir=None, **kwargs):
        if "checkpoint-4" in str(output_dir):
            original(self, output_dir, **kwargs)  # files written, but the process dies before the rename
            os._exit(9)
        return original(self, output_dir, **kwargs)

    Accelerator.save_state = dying_save
    training.main(training.parse_args({argv!r}))
"""


def test_a_process_killed_while_saving_leaves_no_checkpoint_that_latest_would_pick(tmp_path):
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *TINY, "--max_train_steps", "6", "--checkpointing_steps", "2",
            "--checkpoints_total_limit", "3"]
    code = textwrap.dedent(CRASH_DURING_SAVE.format(argv=argv))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr[-2000:]
    assert (out / "checkpoint-4.tmp").is_dir() and not (out / "checkpoint-4").exists()
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2"]
    training.main(training.parse_args(argv + ["--resume_from_checkpoint", "latest"]))
    assert not (out / "checkpoint-4.tmp").exists()
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    straight = run(tmp_path, "--max_train_steps", "6", name="straight")
    assert_same_weights(weights(out), weights(straight))


RANK_DUMP = """
    import sys
    from pixelgpt import training
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
    training.main(training.parse_args(sys.argv[1:]))
"""


def free_port() -> int:
    """A port nobody listens on now, so a leftover or parallel run cannot block the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "launch_train.py"
    script.write_text(textwrap.dedent(RANK_DUMP.format(out=str(tmp_path))))
    common = [*TINY, "--max_train_steps", "4", "--eval_steps", "100", "--sample_steps", "100"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), str(script), "--output_dir", str(tmp_path / "ddp"), *common, "--train_batch_size", "4"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
    except subprocess.TimeoutExpired as err:  # a hung rendezvous: fail with what the ranks printed
        raise AssertionError(f"2-process run hung:\n{(err.stderr or b'')[-3000:]!r}") from err
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert_same_weights(rank0, rank1)  # gradients were synchronised
    single = run(tmp_path, *common, "--train_batch_size", "8", name="single")
    assert_same_weights(weights(tmp_path / "ddp"), weights(single), rtol=1e-4, atol=1e-6)


def test_push_to_hub_uploads_the_model_folder_without_checkpoints(tmp_path):
    calls = []

    def fake_upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        # The files huggingface_hub would send for these arguments.
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        calls.append((repo_id, set(filter_repo_objects(files, ignore_patterns=ignore_patterns)), self.token))

    with mock.patch.object(HfApi, "create_repo", return_value=mock.MagicMock(repo_id="someone/pixelgpt-test")), \
            mock.patch.object(HfApi, "upload_folder", fake_upload_folder):
        run(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "1", "--push_to_hub",
            "--hub_model_id", "someone/pixelgpt-test", "--hub_token", "hf_secret_token")
    [(repo_id, uploaded, token)] = calls
    assert repo_id == "someone/pixelgpt-test" and token == "hf_secret_token"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "samples.png",
            "modeling_pixelgpt.py", "configuration_pixelgpt.py", "image_processing_pixelgpt.py"} <= uploaded
    assert (tmp_path / "out" / "checkpoint-2").is_dir()  # present locally, never uploaded:
    assert not [n for n in uploaded if n.startswith(("checkpoint-", "samples/", "logs/"))]
    assert training.LOCK_NAME not in uploaded  # it names this machine (host, pid) and is held during the push
    assert "hf_secret_token" not in (tmp_path / "out" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------- bad input
def make_folder(root, sizes=((12, 12),) * 6, classes=("cats", "dogs")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def folder_args(tmp_path, root, *extra):
    return training.parse_args(["--output_dir", str(tmp_path / "out"), *TINY, "--train_data_dir", str(root),
                             "--max_train_steps", "1", "--train_batch_size", "2", *extra])


def test_image_folder_with_class_subfolders_trains_class_conditionally(tmp_path):
    root = make_folder(tmp_path / "imgs")
    training.main(folder_args(tmp_path, root, "--class_conditional", "--quantization", "rgb", "--num_levels", "4"))
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.config.num_classes == 2 and model.config.id2label == {0: "cats", 1: "dogs"}
    assert model.config.class_embedding  # the class reaches every row by default
    assert ModelCard.load(tmp_path / "out" / "README.md").data.to_dict().get("datasets") is None


def add_bad_images(root):
    (root / "cats" / "broken.png").write_bytes(b"not an image at all")
    data = (root / "dogs" / "0.png").read_bytes()
    (root / "dogs" / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (5, 5)).save(root / "dogs" / "tiny.png")


def test_a_bad_training_image_stops_the_run_naming_the_file_when_it_is_read(tmp_path):
    root = make_folder(tmp_path / "imgs")
    add_bad_images(root)
    with pytest.raises(ValueError) as info:  # more than a pass: every image is read
        training.main(folder_args(tmp_path, root, "--max_train_steps", "20", "--eval_split", "train",
                                  "--max_eval_samples", "1"))
    message = str(info.value)
    assert re.search(r"Bad training image: \S*(broken|truncated|tiny)\.png", message), message
    # No checkpoint was written yet (every 500 steps): the advice is to run again, not to resume.
    assert "--skip_bad_images" in message and "then start the run again" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_skipping_every_training_image_stops_instead_of_looping(tmp_path):
    root = tmp_path / "imgs"
    make_folder(root / "test", sizes=((12, 12),) * 2)  # good held-out images; every training image is bad
    for c in ("cats", "dogs"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            (root / "train" / c / f"bad{i}.png").write_bytes(b"not an image")
    for extra in ([], ["--streaming"]):
        AcceleratorState._reset_state(reset_partial_state=True)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        args = folder_args(tmp_path, root, "--skip_bad_images", "--train_batch_size", "2", "--max_train_steps", "50",
                           *extra)
        with pytest.raises(ValueError, match=r"holds no usable image: 8 bad ones were skipped, e\.g\. \S*bad"):
            training.main(args)


def test_no_image_is_decoded_before_training_only_as_batches_are_made(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 20)
    opened = []
    real = training.open_image
    with mock.patch.object(training, "open_image", lambda value, where: opened.append(value) or real(value, where)):
        training.main(folder_args(tmp_path, root, "--eval_split", "train", "--max_eval_samples", "2",
                                  "--num_samples", "1"))
    # 40 images: the 2 held out (checked, then evaluated), the 2 of the one training batch and the 2 of the next
    # one (accelerate reads a batch ahead); nothing read the other 34.
    assert len({value["path"] for value in opened}) <= 6, opened


def test_a_bad_held_out_image_is_named_before_training(tmp_path):
    root = make_folder(tmp_path / "imgs")
    add_bad_images(root)
    args = folder_args(tmp_path, root, "--eval_split", "train", "--max_eval_samples", "20")
    with pytest.raises(ValueError) as info:
        training.main(args)
    assert "bad image(s) in eval" in str(info.value) and "--skip_bad_images" in str(info.value)


def test_skip_bad_images_counts_and_lists_what_it_skipped(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    add_bad_images(root)
    # Two passes over 21 training images: each bad one is met twice but listed once.
    training.main(folder_args(tmp_path, root, "--skip_bad_images", "--max_eval_samples", "1", "--eval_split",
                              "train", "--max_train_steps", "20"))
    skipped = (tmp_path / "out" / "skipped_train_images.txt").read_text().splitlines()
    assert sorted(Path(s.split(":")[0]).name for s in skipped) == ["broken.png", "tiny.png", "truncated.png"]
    assert "tiny.png: 5x5 is smaller than --resolution 8" in "\n".join(skipped)
    assert "Skipped 3 train images" in caplog.text
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["skipped_train_images"] == 3


def test_empty_folder_missing_column_and_bad_label_column(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        training.main(folder_args(tmp_path, tmp_path / "empty"))
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(ValueError, match=r"Image column 'picture' not found; columns are \['image', 'label'\]"):
        training.main(folder_args(tmp_path, root, "--image_column", "picture"))
    with pytest.raises(ValueError, match="Label column 'kind' not found"):
        training.main(folder_args(tmp_path, root, "--label_column", "kind", "--class_conditional"))

    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    images = [np.zeros((8, 8), dtype=np.uint8)] * 4
    Dataset.from_dict({"image": images, "kind": ["a", "b", "a", "b"]},
                      features=Features({"image": ImageFeature(), "kind": Value("string")})).save_to_disk(
        str(tmp_path / "ds"))
    with mock.patch.object(training, "load_dataset", lambda *a, **k: __import__("datasets").load_from_disk(
            str(tmp_path / "ds"))), pytest.raises(ValueError, match="'kind' has type .*string.*ClassLabel or integer"):
        training.main(training.parse_args(["--output_dir", str(tmp_path / "o2"), *TINY, "--dataset_name", "x/y",
                                     "--label_column", "kind", "--class_conditional"]))


def test_bad_arguments_are_rejected():
    for argv, message in ((["--quantization", "palette"], "needs --fit_palette"),
                          (["--train_data_dir", "a", "--dataset_name", "b"], "not both"),
                          (["--train_batch_size", "0"], "--train_batch_size must be >= 1"),
                          (["--shuffle_buffer_size", "0"], "--shuffle_buffer_size must be >= 1, got 0"),
                          (["--task", "translate"], "--task translate needs paired source images"),
                          (["--task", "translate", "--source_dir", "s"], "--source_dir pairs with --train_data_dir"),
                          (["--source_column", "s"], "are for --task translate"),
                          (["--task", "translate", "--train_data_dir", "t", "--source_dir", "s",
                            "--source_column", "c"],
                           "--source_column or --source_dir, not both"),
                          (["--task", "inpaint", "--parallel_tokens", "4"], "--parallel_tokens needs --task generate"),
                          (["--inpaint_hole_weight", "0"], "--inpaint_hole_weight must be in (0, 100]"),
                          (["--inpaint_box_sides", "0.75", "0.25"], "LOW <= HIGH <= 1 and HIGH > 0, got 0.75 0.25"),
                          (["--inpaint_box_sides", "0", "0"], "--inpaint_box_sides must be two fractions"),
                          (["--task", "colorize", "--class_conditional"], "does not combine with --task colorize"),
                          (["--task", "upscale", "--no-aligned_condition", "--no-condition_prefix"],
                           "leaves the model no way to read its condition")):
        assert message in parse_error(training.parse_args, argv)


@pytest.mark.parametrize("probability, expected_null_share", [(0.0, 0.0), (1.0, 1.0)])
def test_class_dropout_trains_some_images_unconditionally(tmp_path, probability, expected_null_share):
    seen = []
    original = training.task_loss

    def spy(model, accelerator, batch, *args, reduction="mean", **kwargs):
        if reduction == "mean":  # training steps (evaluation uses reduction="none")
            seen.append(batch["input_ids"][:, 0].clone())
        return original(model, accelerator, batch, *args, reduction=reduction, **kwargs)

    with mock.patch.object(training, "task_loss", spy):
        out = run(tmp_path, "--max_train_steps", "3", "--class_conditional", "--class_dropout_prob", str(probability))
    starts = torch.cat(seen)
    null = AutoModel.from_pretrained(out).config.start_token_id
    assert len(starts) == 3 * 8 and float((starts == null).float().mean()) == expected_null_share


# ---------------------------------------------------------------------------------------------- transformation tasks
def test_hole_weight_weighs_the_rectangle_rows_of_the_training_loss():
    from accelerate import Accelerator

    from conftest import make_model, random_ids

    model = make_model(task="inpaint")
    ids = random_ids(model.config, batch=3)
    accelerator = Accelerator(cpu=True)

    def loss(weight):
        torch.manual_seed(0)  # the same rectangles and orders each time
        return training.task_loss(model, accelerator, {"input_ids": ids}, box_probability=1.0, hole_weight=weight)

    torch.manual_seed(0)
    inputs = layouts_pixelgpt.task_inputs(model.config, ids, box_probability=1.0)
    labels, hole = inputs.pop("labels"), inputs.pop("hole").float()
    nll = torch.nn.functional.cross_entropy(model(**inputs).logits.transpose(1, 2), labels, reduction="none")
    assert 0 < hole.mean() < 1
    torch.testing.assert_close(loss(1.0), nll.mean())
    torch.testing.assert_close(loss(3.0), (nll * (1 + 2 * hole)).sum() / (1 + 2 * hole).sum())


def test_box_warmup_raises_the_share_of_rectangles_linearly(tmp_path):
    seen = []
    original = training.task_loss

    def spy(model, accelerator, batch, k=1, box_probability=0.5, *args, reduction="mean", **kwargs):
        if reduction == "mean":  # training steps (evaluation uses reduction="none")
            seen.append(box_probability)
        return original(model, accelerator, batch, k, box_probability, *args, reduction=reduction, **kwargs)

    with mock.patch.object(training, "task_loss", spy):
        run(tmp_path, "--task", "inpaint", "--max_train_steps", "4", "--inpaint_box_warmup", "0.5",
            "--inpaint_box_probability", "0.8")
    assert seen == pytest.approx([0.0, 0.4, 0.8, 0.8])  # over the first 2 of 4 steps, then constant
    assert "--inpaint_box_warmup must be in [0, 1]" in parse_error(training.parse_args, ["--inpaint_box_warmup", "2"])


def test_inpaint_task_learns_random_orders_and_inpaints_after_loading(tmp_path):
    original, probabilities = layouts_pixelgpt.random_boxes, []

    def spy(batch, image_size, probability, generator, device, sides):
        probabilities.append((probability, sides))
        return original(batch, image_size, probability, generator, device, sides)

    with mock.patch.object(layouts_pixelgpt, "random_boxes", spy):
        out = run(tmp_path, "--task", "inpaint", "--max_train_steps", "40", "--learning_rate", "3e-3",
                  "--inpaint_box_probability", "0.25", "--inpaint_box_sides", "0.25", "0.75")
    assert probabilities.count((0.25, (0.25, 0.75))) == 40  # every training step used random orders and the sides
    results = json.loads((out / "eval_results.json").read_text())
    assert results["bits_per_token"] < 0.8 * results["untrained_bits_per_token"], results
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
    training.main(folder_args(tmp_path, root, "--task", "colorize", "--quantization", "rgb", "--num_levels", "4",
                           "--eval_fraction", "0.3"))
    out = tmp_path / "out"
    model = AutoModel.from_pretrained(out)
    processor = PixelGPTImageProcessor.from_pretrained(out)
    settings = (model.config.task, processor.condition_quantization, model.config.condition_size)
    assert settings == ("colorize", "gray8", 8)
    assert model.config.condition_vocab_size == processor.condition_vocab_size == 256
    colour = model.colorize_images(Image.new("L", (8, 8), 128), num_samples=2, show_progress=False)
    assert [c.mode for c in colour] == ["RGB", "RGB"] and colour[0].size == (8, 8)
    assert Image.open(out / "samples.png").size == (4 * 9 + 1, 9 + 1)  # 2 (gray input, colour output) pairs


def test_upscale_task_reads_a_quarter_resolution_condition(tmp_path):
    out = run(tmp_path, "--task", "upscale", "--quantization", "gray8", "--max_train_steps", "2")
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
    args = ["--task", "translate", "--source_dir", str(sources), "--quantization", "rgb", "--num_levels", "4"]
    training.main(folder_args(tmp_path, targets, *args))
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.config.task == "translate" and model.image_processor is None
    out = model.translate_images(Image.new("L", (8, 8)), show_progress=False,
                                 generator=torch.Generator().manual_seed(0))
    assert out[0].mode == "RGB"
    (sources / "dogs" / "3.bmp").unlink()
    (sources / "cats" / "0.bmp").unlink()
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"2 of \d+ target images have no source image of the same name"):
        training.main(folder_args(tmp_path, targets, *args, "--eval_fraction", "0.01"))


def test_translate_task_reads_a_source_column(tmp_path):
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(1)
    targets = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(12)]
    data = {"image": targets, "sketch": [255 - t for t in targets]}
    features = Features({"image": ImageFeature(), "sketch": ImageFeature()})
    DatasetDict(train=Dataset.from_dict(data, features=features),
                test=Dataset.from_dict(data, features=features)).save_to_disk(str(tmp_path / "ds"))
    seen = []
    original = training.task_loss

    def spy(model, accelerator, batch, *args, **kwargs):
        seen.append((batch["input_ids"][:, 1:].clone(), batch["condition_ids"].clone()))
        return original(model, accelerator, batch, *args, **kwargs)

    with mock.patch.object(training, "load_dataset", lambda *a, **k: __import__("datasets").load_from_disk(
            str(tmp_path / "ds"))), mock.patch.object(training, "task_loss", spy):
        training.main(training.parse_args(["--output_dir", str(tmp_path / "o"), *TINY, "--dataset_name", "x/y",
                                     "--task", "translate", "--source_column", "sketch", "--quantization", "gray8",
                                     "--max_train_steps", "1", "--train_batch_size", "4"]))
    targets_seen, conditions = seen[0]
    assert torch.equal(conditions, 255 - targets_seen)  # each target met its own (inverted) source


def test_the_example_script_trains_one_step_and_saves_a_loadable_model(tmp_path):
    """examples/train.py is the accelerate-launchable face of pixelgpt.training: run it as a user would."""
    out = tmp_path / "example"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "train.py"), "--output_dir", str(out), *TINY,
                             "--max_train_steps", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "eval_results.json").read_text())["steps"] == 1
    assert AutoModel.from_pretrained(out).config.image_size == 8



# ------------------------------------------------------------------------------------- nothing lost (issue 12)
@pytest.mark.parametrize("argv, message", [
    (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
    (["--max_train_steps", "-3"], "--max_train_steps must be >= 1, got -3"),
    (["--checkpoints_total_limit", "-1"], "--checkpoints_total_limit must be >= 1, or 0 to keep every checkpoint"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number > 0"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1"),
    (["--ema_decay", "nan"], "--ema_decay must be in [0, 1), got nan"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite number >= 0"),
    (["--max_grad_norm", "-1"], "--max_grad_norm must be a finite number >= 0 (0 turns it off), got -1.0"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0"),
    (["--lr_warmup_steps", "-3"], "--lr_warmup_steps must be >= 0, got -3"),
    (["--adam_beta2", "1.5"], "--adam_beta2 must be in [0, 1), got 1.5"),
])
def test_numbers_that_cannot_work_are_refused(argv, message):
    assert message in parse_error(training.parse_args, argv)


def test_latest_with_nothing_to_resume_fails_instead_of_starting_over(tmp_path):
    with pytest.raises(TrainingError, match="there is no checkpoint in .* to resume from"):
        run(tmp_path, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_resuming_an_older_checkpoint_is_refused_while_later_ones_exist(tmp_path):
    out = run(tmp_path, "--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3")
    before = {p.name for p in training.list_checkpoints(out)}
    with pytest.raises(TrainingError, match=r"checkpoint-2: .* already has later checkpoints "
                                            r"\(checkpoint-4, checkpoint-6\)"):
        run(tmp_path, "--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3",
            "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert {p.name for p in training.list_checkpoints(out)} == before == {"checkpoint-2", "checkpoint-4",
                                                                          "checkpoint-6"}


def test_resuming_with_other_model_settings_is_refused_naming_them(tmp_path):
    out = run(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2")
    with pytest.raises(TrainingError, match=r"--resolution 8 -> 12"):
        run(tmp_path, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--resolution", "12")
    with pytest.raises(TrainingError, match=r"--task 'generate' -> 'inpaint'"):
        run(tmp_path, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--task", "inpaint")
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2"]


def test_resuming_a_finished_run_trains_no_further_step(tmp_path):
    out = run(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "4")
    finished = weights(out)
    seen = []
    original = training.task_loss

    def spy(model, accelerator, batch, *args, reduction="mean", **kwargs):
        if reduction == "mean":
            seen.append(1)
        return original(model, accelerator, batch, *args, reduction=reduction, **kwargs)

    with mock.patch.object(training, "task_loss", spy):
        run(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "4", "--resume_from_checkpoint", "latest")
    assert seen == [] and json.loads((out / "eval_results.json").read_text())["steps"] == 4
    assert_same_weights(weights(out), finished)


def test_the_hub_token_reaches_no_tracker_log_card_or_file(tmp_path):
    secret = "hf_SeCrEtToKeN1234567890"
    out = run(tmp_path, "--max_train_steps", "2", "--report_to", "tensorboard", "--hub_token", secret,
              "--checkpointing_steps", "1")
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any("events.out.tfevents" in f.name for f in files) and any(f.name == "hparams.yml" for f in files)
    assert [f for f in files if secret.encode() in f.read_bytes()] == []


def test_a_local_dataset_path_stays_off_the_model_card(tmp_path):
    from pixelgpt.default_data import load_default_dataset

    local = tmp_path / "my" / "private" / "dataset"
    load_default_dataset()["train"].select(range(80)).to_parquet(str(local / "train.parquet"))
    out = run(tmp_path, "--max_train_steps", "1", "--dataset_name", str(local), "--resolution", "8")
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and "private" not in card
    assert ModelCard.load(out / "README.md").data.datasets is None


def test_labels_are_read_only_when_used_and_must_be_class_indices(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    def save(name, labels, dtype):
        images = [np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8) for i in range(len(labels))]
        Dataset.from_dict({"image": images, "label": labels},
                          features=Features({"image": ImageFeature(), "label": Value(dtype)})).save_to_disk(
            str(tmp_path / name))

    save("strings", ["cat", "dog"] * 8, "string")
    save("huge", [0, 10**9] * 8, "int64")
    for name, extra in (("strings", []), ("huge", [])):  # unconditional: the labels are never read
        with mock.patch.object(training, "load_dataset", lambda *a, name=name, **k: __import__(
                "datasets").load_from_disk(str(tmp_path / name))):
            run(tmp_path, "--dataset_name", "x/y", "--max_train_steps", "1", "--train_batch_size", "4",
                *extra, name=f"out-{name}")
    with mock.patch.object(training, "load_dataset", lambda *a, **k: __import__("datasets").load_from_disk(
            str(tmp_path / "huge"))), pytest.raises(ValueError, match=r"holds label 1000000000; labels must be "
                                                                      r"class indices .* at most 100000 classes"):
        run(tmp_path, "--dataset_name", "x/y", "--max_train_steps", "1", "--class_conditional", name="out-cc")


def test_a_new_run_is_refused_where_checkpoints_of_another_run_exist(tmp_path):
    out = run(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3")
    before = {p.name: weights(p) for p in training.list_checkpoints(out)}
    with pytest.raises(TrainingError, match=r"already holds checkpoints of a run \(checkpoint-2, checkpoint-4\): "
                                            r"continue it with --resume_from_checkpoint latest"):
        run(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1")
    after = {p.name: weights(p) for p in training.list_checkpoints(out)}
    assert after.keys() == before.keys()
    for name in before:
        assert_same_weights(after[name], before[name])
    # An older checkpoint kept elsewhere is refused too: resuming it would replace checkpoint-4 here.
    shutil.copytree(out / "checkpoint-2", tmp_path / "kept" / "checkpoint-2")
    with pytest.raises(TrainingError, match=r"already has later checkpoints \(checkpoint-4\)"):
        run(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2", "--resume_from_checkpoint",
            str(tmp_path / "kept" / "checkpoint-2"))
    # A bare checkpoint name is looked up in --output_dir; the same model given explicitly is the same setting.
    run(tmp_path, "--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3",
        "--resume_from_checkpoint", "checkpoint-4", "--intermediate_size", "96")
    assert [p.name for p in training.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_a_checkpoint_without_readable_step_file_is_a_one_line_refusal(tmp_path):
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(TrainingError, match=r"checkpoint-3: its pixelgpt_step.json is missing or damaged"):
        run(tmp_path, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    (tmp_path / "out" / "checkpoint-3" / "pixelgpt_step.json").write_text("{step: 3")
    with pytest.raises(TrainingError, match=r"pixelgpt_step.json is missing or damaged \(JSONDecodeError"):
        run(tmp_path, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")


def test_a_non_finite_moving_average_is_never_checkpointed(tmp_path):
    from torch.optim.swa_utils import AveragedModel

    update = AveragedModel.update_parameters

    def poisoned(self, model):
        update(self, model)
        if self.n_averaged.item() == 3:  # after step 3: the EMA goes bad, the weights stay fine
            next(self.module.parameters()).data.fill_(float("nan"))

    with mock.patch.object(AveragedModel, "update_parameters", poisoned), pytest.raises(
            TrainingError, match=r"diverged at step 4: the weights or their moving average \(EMA\) hold NaN.*"
                                 r"the last good checkpoint is checkpoint-2"):
        run(tmp_path, "--max_train_steps", "6", "--checkpointing_steps", "2", "--use_ema", "--ema_decay", "0.9")
    assert [p.name for p in training.list_checkpoints(tmp_path / "out")] == ["checkpoint-2"]



# ----------------------------------------------------------------------------------------------------- streaming
def test_a_streamed_folder_trains_and_a_resumed_stream_ends_with_the_same_weights(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 12)
    add_bad_images(root)
    # 27 images: the first 4 (good) are held out, 23 train (3 bad, skipped) in passes of 6 batches (the last of 3
    # images); step 8 is inside the second pass.
    common = ["--train_data_dir", str(root), "--streaming", "--shuffle_buffer_size", "8", "--max_eval_samples", "4",
              "--train_batch_size", "4", "--max_train_steps", "10", "--checkpointing_steps", "4",
              "--checkpoints_total_limit", "0", "--class_conditional", "--skip_bad_images"]
    straight = run(tmp_path, *common, name="straight")
    model = AutoModel.from_pretrained(straight)
    assert model.config.num_classes == 2  # the labels' ClassLabel, known without reading the stream
    assert "trained on images streamed from local files" in (straight / "README.md").read_text()
    save = training.save_checkpoint

    def save_then_crash(accelerator, args, step, ema, settings, data_state):
        path = save(accelerator, args, step, ema, settings, data_state)
        if step == 8:
            raise KeyboardInterrupt
        return path

    with mock.patch.object(training, "save_checkpoint", save_then_crash), pytest.raises(KeyboardInterrupt):
        run(tmp_path, *common, name="resumed")
    saved = json.loads((tmp_path / "resumed" / "checkpoint-8" / "pixelgpt_step.json").read_text())
    assert saved["data"]["positions"] == [[1, 2]]  # pass 1, two batches into it
    assert len(saved["data"]["bad_images"]) == 3  # the whole first pass was read
    run(tmp_path, *common, "--resume_from_checkpoint", "latest", name="resumed")
    assert_same_weights(weights(tmp_path / "resumed"), weights(straight))
    for out in (straight, tmp_path / "resumed"):  # the resumed run kept the count of the images skipped before
        assert json.loads((out / "eval_results.json").read_text())["skipped_train_images"] == 3
        assert len((out / "skipped_train_images.txt").read_text().splitlines()) == 3

    # What decides the place in the data must not change on resume, nor the number of processes.
    with pytest.raises(TrainingError, match=r"other settings \(--train_batch_size 4 -> 2\)"):
        run(tmp_path, *common, "--train_batch_size", "2", "--resume_from_checkpoint", "latest", name="resumed")
    shutil.copytree(tmp_path / "resumed" / "checkpoint-8", tmp_path / "other" / "checkpoint-8")
    step_file = tmp_path / "other" / "checkpoint-8" / "pixelgpt_step.json"
    step_file.write_text(json.dumps(dict(saved, data=dict(saved["data"], positions=[[1, 2], [1, 2]]))))
    with pytest.raises(TrainingError, match="written by 2 processes.*resume it with 2 processes, not 1"):
        run(tmp_path, *common, "--resume_from_checkpoint", "latest", name="other")


def test_a_sharded_stream_never_trains_on_its_held_out_images(tmp_path):
    """Held-out images are left out by content: each DataLoader worker (and process) reads whole files, and a skip
    of the first images would be divided among them."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for shard in range(2):  # images as bytes without file names, as Hub parquet files hold them
        Dataset.from_dict({"image": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(10)]},
                          features=Features({"image": ImageFeature()})).to_parquet(
            str(tmp_path / "data" / f"train-{shard}.parquet"))
    args = training.parse_args(["--dataset_name", str(tmp_path / "data"), "--streaming", "--max_train_steps", "1",
                                "--max_eval_samples", "4", "--dataloader_num_workers", "2"])
    train, held_out, _ = training.load_splits(args)
    loader = torch.utils.data.DataLoader(train.shuffle(seed=0, buffer_size=4), batch_size=None, num_workers=2)
    trained = [image_key(row["image"]) for row in loader]
    held = {image_key(row["image"]) for row in held_out}
    assert len(held) == 4 and len(trained) == 16 and not held & set(trained)


def test_streaming_refuses_what_it_cannot_do(tmp_path):
    assert "--streaming needs --max_train_steps" in parse_error(training.parse_args, ["--streaming"])
    assert "--source_dir pairs files" in parse_error(training.parse_args, [
        "--streaming", "--max_train_steps", "1", "--task", "translate", "--train_data_dir", "a", "--source_dir", "b"])
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    Dataset.from_dict({"image": [np.zeros((8, 8), dtype=np.uint8)] * 4, "kind": [0, 1, 0, 1]},
                      features=Features({"image": ImageFeature(), "kind": Value("int64")})).to_parquet(
        str(tmp_path / "data" / "train.parquet"))
    with pytest.raises(ValueError, match="With --streaming, --class_conditional needs a ClassLabel"):
        run(tmp_path, "--dataset_name", str(tmp_path / "data"), "--streaming", "--max_train_steps", "1",
            "--label_column", "kind", "--class_conditional", "--max_eval_samples", "1")


STREAM_SEEN = """
    import os, sys
    from pixelgpt import training
    read = training.read_image
    def logged(value, where, *rest):
        kind = "held" if where.startswith("eval") else "seen"  # held-out rows are checked as eval[i] first
        with open(os.path.join({out!r}, kind + "-" + os.environ["RANK"] + ".txt"), "a") as f:
            f.write(value["path"] + "\\n")
        return read(value, where, *rest)
    training.read_image = logged
    training.main(training.parse_args(sys.argv[1:]))
"""


def test_two_streaming_cpu_processes_read_disjoint_parts(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((12, 12),) * 12)
    script = tmp_path / "launch_stream.py"
    script.write_text(textwrap.dedent(STREAM_SEEN.format(out=str(tmp_path))))
    # 4 held out, 20 streamed: each process reads its 10 in passes of 2 batches of 4 (3 steps: one pass and a bit).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), str(script), "--output_dir", str(tmp_path / "ddp"), *TINY, "--train_data_dir",
              str(root), "--streaming", "--max_train_steps", "2", "--train_batch_size", "4", "--max_eval_samples", "4"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"2-process run hung:\n{(err.stderr or b'')[-3000:]!r}") from err
    assert result.returncode == 0, result.stderr[-3000:]
    held = set((tmp_path / "held-0.txt").read_text().split())
    assert len(held) == 4 and held == set((tmp_path / "held-1.txt").read_text().split())
    # What each process trained on (it also evaluated on its share of the held-out images).
    seen = [set((tmp_path / f"seen-{rank}.txt").read_text().split()) - held for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 8  # two batches of 4 each, all different
    assert not seen[0] & seen[1]
    assert (tmp_path / "ddp" / "model.safetensors").exists()
