"""Training PixelGPT and its image tokenizer: the library behind `examples/train.py`, `examples/train_tokenizer.py`,
`pixelgpt train` and `pixelgpt train-tokenizer`.

    from pixelgpt.training import main, parse_args
    main(parse_args(["--output_dir", "pixelgpt-fashion", "--max_train_steps", "100"]))

One concern per module: `arguments` (the flags as typed dataclasses), `data` (splits, pairing, labels, checks,
collate), `batches` (batches and the place in them), `workspace` (output folder, lock, cross-process decisions),
`checkpoints`, `loop` (the one loop both trainers run), then what is particular to each trainer: `pixelgpt` and
`tokenizer`.
"""

from .arguments import (
    DataArguments,
    ImageArguments,
    ModelArguments,
    RunArguments,
    TokenizerArguments,
    TokenizerTrainingArguments,
    TrainingArguments,
    build_parser,
    build_tokenizer_parser,
    parse_args,
    parse_tokenizer_args,
)
from .data import load_splits
from .pixelgpt import PixelGPTTrainer, main
from .tokenizer import TokenizerTrainer
from .tokenizer import main as tokenizer_main

__all__ = [
    "DataArguments",
    "ImageArguments",
    "ModelArguments",
    "PixelGPTTrainer",
    "RunArguments",
    "TokenizerArguments",
    "TokenizerTrainer",
    "TokenizerTrainingArguments",
    "TrainingArguments",
    "build_parser",
    "build_tokenizer_parser",
    "load_splits",
    "main",
    "parse_args",
    "parse_tokenizer_args",
    "tokenizer_main",
]
