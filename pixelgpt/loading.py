"""Loading a PixelGPT model by folder or Hub repo id, for the `pixelgpt` command and the web demo.

Every failure is a ValueError with a one-line message saying what was wrong and what is accepted: the command prints
it as its error, while a notebook or a Space gets an exception it can show (nothing here ends the process).
"""

from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, AutoModel

from pixelgpt.modeling.configuration_pixelgpt import PixelGPTConfig
from pixelgpt.modeling.configuration_pixelgpt_vqvae import PixelGPTVQVAEConfig

_ACCEPTED = "give a model folder (the one holding config.json) or a Hub repo id (user/name)"


def torch_device(device: str | None = None) -> torch.device:
    """`device` as a torch device; None: cuda when torch sees a GPU, else cpu."""
    try:
        resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a torch device ({err}).") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for a GPU, but torch sees none here; use cpu.")
    return resolved


def is_repo_id(name: str) -> bool:
    # The Hub's own rule: a name it refuses (./x, /x, ~/x, a/b/c, C:\x, spaces) can only be meant as a folder.
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_model(name: str, device: str | None = None):
    """The PixelGPT model of folder or Hub repo id `name` on `device` (see `torch_device`), in eval mode. It runs the
    code saved with the model (trust_remote_code=True), so that a model loads as it was saved: load only models you
    trust."""
    target = torch_device(device)
    folder = Path(name).expanduser()  # from_pretrained does not expand ~
    if folder.is_file():
        raise ValueError(f"model {name} is a file; {_ACCEPTED}.")
    if not folder.is_dir() and not is_repo_id(name):
        raise ValueError(f"model {name}: no such folder; {_ACCEPTED}.")
    source = str(folder) if folder.is_dir() else name
    try:  # the config first: a folder of another kind is refused before its weights are read
        config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    except (OSError, ValueError) as err:
        # Not a local folder: the Hub's error alone would not say that a folder of that name was looked for first.
        failed = (f"cannot load model {name}" if folder.is_dir() else
                  f"model {name} is not a local folder, and loading it from the Hub failed")
        raise ValueError(f"{failed}: {_first_line(err)}") from None
    if config.model_type == PixelGPTVQVAEConfig.model_type:
        raise ValueError(f"{name} holds an image tokenizer, not a PixelGPT model: `pixelgpt train --tokenizer {name}` "
                         "(examples/train.py --tokenizer) trains a model on its tokens; load that model.")
    if config.model_type != PixelGPTConfig.model_type:
        raise ValueError(f"{name} holds a {config.model_type!r} model, not a PixelGPT model (model_type "
                         f"{PixelGPTConfig.model_type!r}).")
    try:
        model = AutoModel.from_pretrained(source, config=config, trust_remote_code=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load model {name}: {_first_line(err)}") from None
    return model.to(target).eval()


def tokenizer_config(name: str) -> PixelGPTVQVAEConfig:
    """The config of the `--tokenizer` folder or Hub id (weights are loaded later); a clear error when it holds
    something else."""
    hint = "Give the output folder (or Hub id) of examples/train_tokenizer.py."
    folder = Path(name).expanduser()
    if folder.is_file() or not folder.is_dir() and not is_repo_id(name):
        raise ValueError(f"--tokenizer {name}: {'a file' if folder.is_file() else 'no such folder'}. {hint}")
    try:
        config = PixelGPTVQVAEConfig.get_config_dict(str(folder) if folder.is_dir() else name)[0]
    except OSError as err:
        raise ValueError(f"--tokenizer {name}: no PixelGPT tokenizer could be loaded from it ({err}). {hint}") from None
    model_type = config.get("model_type")
    if model_type is None:  # a folder without a model's config.json, e.g. the training images themselves
        raise ValueError(f"--tokenizer {name} holds no saved model (no config.json naming a model type). {hint}")
    if model_type != PixelGPTVQVAEConfig.model_type:  # loading it anyway would train on random codes
        raise ValueError(f"--tokenizer {name} holds a {model_type!r} model, not a PixelGPT image tokenizer "
                         f"({PixelGPTVQVAEConfig.model_type!r}). {hint}")
    return PixelGPTVQVAEConfig.from_dict(config)
