"""The example scripts, also installed as `pixelgpt.examples` (`pixelgpt train` runs `train.py`)."""
