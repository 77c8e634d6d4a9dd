"""Train a PixelGPT image tokenizer (stage one of two), then save (and optionally push) it with its image processor,
reconstruction grid and model card.

    accelerate launch examples/train_tokenizer.py --train_data_dir ./emoji --output_dir emoji-tokenizer
    python examples/train.py --tokenizer emoji-tokenizer --train_data_dir ./emoji     # stage two: PixelGPT on tokens

The flags and the loop are library code (`pixelgpt.training`), run also by `pixelgpt train-tokenizer`;
`python examples/train_tokenizer.py --help` lists every flag.
"""

import sys

from pixelgpt.training import parse_tokenizer_args, tokenizer_main
from pixelgpt.utils import TrainingError

if __name__ == "__main__":
    try:
        tokenizer_main(parse_tokenizer_args())
    except (ValueError, TrainingError) as err:  # bad data, a busy or unwritable folder, divergence: one line
        sys.exit(f"train_tokenizer.py: {err}")
