"""Loading a model by folder or Hub repo id (pixelgpt/loading.py), as `pixelgpt` and the demo do: a failure is a
one-line ValueError saying what was wrong, never the end of the process."""

import pytest
import torch
from transformers import BertConfig

from pixelgpt.loading import load_model

from conftest import save_model, save_tokenizer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model folder, an image tokenizer's folder, a BERT config's folder, an empty folder and a file."""
    root = tmp_path_factory.mktemp("loading")
    save_model(root / "model")
    save_tokenizer(root / "tokenizer")
    # Only a config: a folder of another kind is refused before any weights are looked for.
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        root / "bert")
    (root / "empty").mkdir()
    (root / "config.json").write_text("{}")
    return root


def test_a_folder_loads_in_eval_mode_with_home_expanded(root, monkeypatch):
    model = load_model(str(root / "model"), "cpu")
    assert type(model).__name__ == "PixelGPTForImageGeneration" and not model.training
    assert model.device == torch.device("cpu")
    monkeypatch.setenv("HOME", str(root))
    assert type(load_model("~/model", "cpu")).__name__ == "PixelGPTForImageGeneration"


def load_error(name: str, device: str | None = "cpu") -> str:
    with pytest.raises(ValueError) as info:
        load_model(name, device)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_an_image_tokenizer_is_refused_naming_train_tokenizer(root):
    message = load_error(str(root / "tokenizer"))
    assert "holds an image tokenizer, not a PixelGPT model" in message and "train --tokenizer" in message


def test_a_model_of_another_kind_is_refused(root):
    assert "holds a 'bert' model, not a PixelGPT model" in load_error(str(root / "bert"))


@pytest.mark.parametrize("name", ["missing", "./missing", "missing/model/v2", "missing model", "~/missing"])
def test_a_path_that_names_no_folder_says_so(root, monkeypatch, name):
    """Names the Hub refuses as repo ids (a path, a space) can only mean a folder: no Hub error about them."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root))
    if name == "missing":
        name = str(root / "missing")
    message = load_error(name)
    assert f"model {name}: no such folder" in message and "Repo id" not in message, message


def test_a_repo_id_that_is_no_folder_names_both_places(root, monkeypatch):
    monkeypatch.chdir(root)
    message = load_error("nobody/no-such-model")  # tests run with HF_HUB_OFFLINE=1
    assert message.startswith("model nobody/no-such-model is not a local folder, and loading it from the Hub failed")


def test_a_file_or_a_folder_without_a_model_is_refused(root):
    assert "is a file; give a model folder" in load_error(str(root / "config.json"))
    assert load_error(str(root / "empty")).startswith(f"cannot load model {root / 'empty'}: ")


def test_a_bad_device_is_refused_before_loading(root):
    assert "'warp9' is not a torch device" in load_error(str(root / "model"), "warp9")
    if not torch.cuda.is_available():
        assert "asks for a GPU, but torch sees none" in load_error(str(root / "model"), "cuda")
