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
