"""Train a PixelGPT on an image dataset, then save (and optionally push) model, image processor and model card.

    accelerate launch examples/train.py --output_dir pixelgpt-fashion          # built-in Fashion-MNIST subset
    accelerate launch examples/train.py --train_data_dir ./my_images --resolution 32 --quantization rgb
    python examples/train.py --tokenizer none --task inpaint --output_dir inpaint-fashion

The flags, the data pipeline and the loop are library code (`pixelgpt.training`), so that the installed
`pixelgpt train` command runs the same thing; `python examples/train.py --help` lists every flag.
"""

import sys

from pixelgpt.training import main, parse_args
from pixelgpt.utils import TrainingError

if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, TrainingError) as err:  # bad data, a busy or unwritable folder, divergence: one line
        sys.exit(f"train.py: {err}")
