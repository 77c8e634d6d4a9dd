import os

# Tests never reach the network. Set before anything imports huggingface_hub, which reads it once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pixelgpt import PixelGPTConfig, PixelGPTForImageGeneration, PixelGPTImageProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def one_cpu_thread():
    """For a module whose tests compare weights bit for bit across runs (in this process and in subprocesses):
    one CPU thread here and in every child. With two, a reduction now and then splits differently and a weight
    differs by one float32 step (seen: 1.5e-8 in 1 of ~15 killed-and-resumed runs), which says nothing about
    resuming. Use as `one_thread = pytest.fixture(scope="module", autouse=True)(one_cpu_thread)`."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def parse_error(parse_args, argv) -> str:
    """What a script's `parse_args` prints before it exits on `argv`."""
    from unittest import mock

    with pytest.raises(SystemExit), mock.patch.object(sys, "stderr") as err:
        parse_args(argv)
    return "".join(c.args[0] for c in err.write.call_args_list)


def tiny_config(**overrides) -> PixelGPTConfig:
    """Odd sizes on purpose: shape mistakes do not hide behind equal dimensions."""
    fields = dict(vocab_size=13, image_size=5, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=40)
    fields.update(overrides)
    return PixelGPTConfig(**fields)


def random_ids(config: PixelGPTConfig, batch: int = 2, seed: int = 0, start: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, 1 + config.num_image_tokens), generator=g)
    ids[:, 0] = config.start_token_id if start is None else start
    return ids


def run_without_pixelgpt(code: str, env: dict | None = None, cwd: Path | None = None) -> str:
    """Run `code` in a fresh interpreter where `import pixelgpt` fails, as if the package were not installed."""
    prelude = "import sys\nsys.modules['pixelgpt'] = None  # any import of the package now raises ImportError\n"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                            env=full_env, cwd=cwd or "/", timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def default_dataset():
    from pixelgpt.default_data import load_default_dataset

    return load_default_dataset()


@pytest.fixture
def gray_processor():
    return PixelGPTImageProcessor(quantization="gray", num_levels=4, image_size=5)


def make_model(seed=0, cls=PixelGPTForImageGeneration, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).eval()


@pytest.fixture
def model_and_processor():
    model = make_model(vocab_size=64, image_size=5, num_classes=2)
    return model, PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=5)


@pytest.fixture
def gray8_model():
    model = make_model(vocab_size=256, image_size=5, num_classes=2)
    return model, PixelGPTImageProcessor(quantization="gray8", image_size=5)


@pytest.fixture
def inpaint_model():
    model = make_model(task="inpaint", vocab_size=256, image_size=6)
    return model, PixelGPTImageProcessor(quantization="gray8", image_size=6)


def make_conditional(task="colorize", condition_size=3, **overrides):
    model = make_model(task=task, vocab_size=64, image_size=6, condition_size=condition_size,
                       condition_vocab_size=256, **overrides)
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=4, image_size=6,
                                       condition_quantization="gray8", condition_size=condition_size)
    return model, processor


def assert_honest_card(folder: Path, *private: str) -> str:
    """The model card in `folder` links to no web address (none is set in the package metadata) and to no file
    outside the folder, and names no absolute path (nor any string of `private`); returns its text."""
    import re

    text = (Path(folder) / "README.md").read_text()
    assert not re.search(r"https?://|www\.", text), re.findall(r"\S*(?:https?://|www\.)\S*", text)
    for target in re.findall(r"\]\(([^)]*)\)", text):  # markdown links and images: files beside the card
        assert "/" not in target and (Path(folder) / target).is_file(), target
    for path in ("/tmp", "/home", "/work", "/root", "/Users", str(Path(folder).resolve()), *private):
        assert path not in text, path
    return text


def assert_nearest_enlargement(large_path: Path, small_path: Path, min_width: int = 512) -> int:
    """`large_path` is `small_path` enlarged by a whole factor with nearest neighbour (each pixel an exact
    factor x factor block) to at least `min_width` pixels; returns the factor."""
    import numpy as np
    from PIL import Image

    small, large = np.asarray(Image.open(small_path)), np.asarray(Image.open(large_path))
    factor = large.shape[1] // small.shape[1]
    assert large.shape[1] >= min_width and large.shape[:2] == (small.shape[0] * factor, small.shape[1] * factor)
    assert np.array_equal(large, small.repeat(factor, 0).repeat(factor, 1))
    return factor


def save_model(folder, **overrides) -> str:
    """A tiny gray8 model (6x6 pixels) and its processor saved in `folder`, as `--model` loads them."""
    torch.manual_seed(0)
    PixelGPTForImageGeneration(tiny_config(vocab_size=256, image_size=6, **overrides)).save_pretrained(folder)
    condition = {}
    if overrides.get("condition_size"):
        condition = dict(condition_quantization="gray8", condition_size=overrides["condition_size"])
    PixelGPTImageProcessor(quantization="gray8", image_size=6, **condition).save_pretrained(folder)
    return str(folder)


def save_tokenizer(folder) -> str:
    """A tiny image tokenizer (8x8 pixels, 9 codes) saved in `folder`, as train_tokenizer.py saves one."""
    from pixelgpt import PixelGPTVQVAE, PixelGPTVQVAEConfig

    torch.manual_seed(0)
    config = PixelGPTVQVAEConfig(image_size=8, base_channels=8, downsample_factor=2, fsq_levels=[3, 3])
    PixelGPTVQVAE(config).save_pretrained(folder)
    return str(folder)


# Captions of the tiny text models below: colour words x shapes, as the built-in emoji captions compose them.
TEXT_CAPTIONS = ["red square", "blue circle", "green heart", "purple square", "red circle", "blue heart", ""]


def make_text_model(seed=0, image_size=5, **overrides):
    """A tiny text model (prompts of at most 16 tokens, a WordPiece tokenizer trained on TEXT_CAPTIONS) and its
    PixelGPTProcessor (8-level RGB pixels)."""
    from pixelgpt.training.text import build_text_processor

    image_processor = PixelGPTImageProcessor(quantization="rgb", num_levels=2, image_size=image_size)
    processor = build_text_processor(image_processor, TEXT_CAPTIONS * 2, vocab_size=60)
    model = make_model(seed, vocab_size=8, image_size=image_size, text_vocab_size=len(processor.tokenizer),
                       max_text_length=processor.max_text_length, **overrides)
    return model, processor


def save_text_model(folder, **overrides) -> str:
    """A tiny text model saved in `folder` as training saves one: weights, image processor, PixelGPTProcessor."""
    model, processor = make_text_model(**overrides)
    model.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
