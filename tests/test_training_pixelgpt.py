"""pixelgpt.training.pixelgpt: what is particular to training a PixelGPT, on the functions that own it: the task's
loss (rectangle weighting), condition dropout and the rectangles' warm-up in a training step, held-out bits. Tiny
models, no run."""

import math

import pytest
import torch
from accelerate import Accelerator
from training_helpers import TINY, fresh_accelerate_state

from pixelgpt import training
from pixelgpt.modeling import layouts_pixelgpt
from pixelgpt.training import pixelgpt as pixelgpt_training
from pixelgpt.training.pixelgpt import PixelGPTTrainer, evaluate, run_settings, task_loss

from conftest import make_model, random_ids

fresh_state = pytest.fixture(autouse=True)(fresh_accelerate_state)


def test_hole_weight_weighs_the_rectangle_rows_of_the_training_loss():
    model = make_model(task="inpaint")
    ids = random_ids(model.config, batch=3)
    accelerator = Accelerator(cpu=True)

    def loss(weight):
        torch.manual_seed(0)  # the same rectangles and orders each time
        return task_loss(model, accelerator, {"input_ids": ids}, box_probability=1.0, hole_weight=weight)

    torch.manual_seed(0)
    inputs = layouts_pixelgpt.task_inputs(model.config, ids, box_probability=1.0)
    labels, hole = inputs.pop("labels"), inputs.pop("hole").float()
    nll = torch.nn.functional.cross_entropy(model(**inputs).logits.transpose(1, 2), labels, reduction="none")
    assert 0 < hole.mean() < 1
    torch.testing.assert_close(loss(1.0), nll.mean())
    torch.testing.assert_close(loss(3.0), (nll * (1 + 2 * hole)).sum() / (1 + 2 * hole).sum())


def trainer_for(*argv, max_steps=4, **model_overrides):
    """A PixelGPTTrainer holding only what a training step (`loss`) reads: its arguments, accelerator, model,
    config and the run's length."""
    trainer = PixelGPTTrainer.__new__(PixelGPTTrainer)
    trainer.args = training.parse_args([*TINY, *argv])
    trainer.accelerator = Accelerator(cpu=True)
    trainer.model = make_model(**model_overrides)
    trainer.config, trainer.max_steps, trainer.tokens_seen = trainer.model.config, max_steps, 0
    return trainer


def spy_on_task_loss(monkeypatch) -> list:
    """The (batch, k, box_probability) of each training loss; the trainer looks task_loss up in its module."""
    seen, original = [], pixelgpt_training.task_loss

    def spy(model, accelerator, batch, k=1, box_probability=0.5, *args, **kwargs):
        seen.append((batch, k, box_probability))
        return original(model, accelerator, batch, k, box_probability, *args, **kwargs)

    monkeypatch.setattr(pixelgpt_training, "task_loss", spy)
    return seen


@pytest.mark.parametrize("probability, expected_null_share", [(0.0, 0.0), (1.0, 1.0), (0.5, None)])
def test_class_dropout_trains_some_images_unconditionally(monkeypatch, probability, expected_null_share):
    seen = spy_on_task_loss(monkeypatch)
    trainer = trainer_for("--class_conditional", "--class_dropout_prob", str(probability), num_classes=2)
    config = trainer.config
    ids = random_ids(config, batch=64, start=config.class_token_id(1))
    torch.manual_seed(0)
    trainer.loss({"input_ids": ids}, step=0)
    starts = seen[0][0]["input_ids"][:, 0]
    null = float((starts == config.start_token_id).float().mean())
    if expected_null_share is None:
        assert 0.3 < null < 0.7 and set(starts.tolist()) == {config.start_token_id, config.class_token_id(1)}
    else:
        assert null == expected_null_share
    assert (ids[:, 0] == config.class_token_id(1)).all()  # the batch itself is left as it was
    assert trainer.tokens_seen == ids[:, 1:].numel()


def test_box_warmup_raises_the_share_of_rectangles_linearly(monkeypatch):
    seen = spy_on_task_loss(monkeypatch)
    trainer = trainer_for("--task", "inpaint", "--inpaint_box_warmup", "0.5", "--inpaint_box_probability", "0.8",
                          max_steps=4, task="inpaint")
    for step in range(4):
        trainer.loss({"input_ids": random_ids(trainer.config)}, step)
    assert [probability for _, _, probability in seen] == pytest.approx([0.0, 0.4, 0.8, 0.8])  # then constant


def test_parallel_tokens_train_k_ahead_on_their_share_of_steps(monkeypatch):
    seen = spy_on_task_loss(monkeypatch)
    trainer = trainer_for("--parallel_tokens", "3", "--parallel_fraction", "0.5", parallel_tokens=3)
    torch.manual_seed(0)
    for step in range(24):
        trainer.loss({"input_ids": random_ids(trainer.config)}, step)
    ks = [k for _, k, _ in seen]
    assert set(ks) == {1, 3} and 5 < ks.count(3) < 19


def test_held_out_bits_are_the_mean_loss_in_bits_and_any_order_models_score_the_same_orders():
    accelerator = Accelerator(cpu=True)
    model = make_model()
    ids = random_ids(model.config, batch=6)
    loader = [{"input_ids": ids[:4]}, {"input_ids": ids[4:]}]
    expected = task_loss(model, accelerator, {"input_ids": ids}).item() / math.log(2)
    assert evaluate(model, loader, accelerator) == pytest.approx(expected, rel=1e-5)
    assert model.training  # evaluation leaves the model as training found it
    inpaint = make_model(task="inpaint")
    scores = {evaluate(inpaint, loader, accelerator, seed=seed) for seed in (0, 0, 1)}
    assert len(scores) == 2  # the same seed draws the same orders at every evaluation


def test_the_resume_settings_are_the_model_as_it_resolves():
    settings = run_settings(training.parse_args(TINY))
    assert (settings["hidden_size"], settings["intermediate_size"], settings["resolution"]) == (32, 96, 8)
    assert run_settings(training.parse_args(TINY + ["--intermediate_size", "96"])) == settings
    assert run_settings(training.parse_args(TINY + ["--intermediate_size", "64"]))["intermediate_size"] == 64
