"""Does a text model draw what its prompt says? Four figures on the built-in emoji set (three also
stressed), no download needed.

    python examples/prompt_quality.py --model emoji-text-model --num_samples 8 --guidance_scale 1.5
    python examples/prompt_quality.py --model emoji-text-model --output_json prompt_quality.json

1. Colour words: every colour x shape prompt of the training split ("large blue circle", "red heart"), --num_samples
   samples each. A sample's colour is its mean foreground RGB (pixels not near the white background that
   transparent images are composited onto), assigned to the nearest of the nine named colours, whose references are
   measured the same way from the real training images of each colour. Reported: the share of samples of the colour
   named (chance: 1/9), per colour too; and the share right in colour and shape (chance: 1/27), a sample's shape
   being the grid shape whose outline its foreground, cropped to its bounding box, overlaps most.
2. Composition: the same for the five colour x shape pairs the training split never shows (purple square, green
   heart, orange circle, yellow square, brown heart): can the model put together words it saw apart? Per pair too.
3. Skin tones: six people ("wave", "thumbs up", ...) in the five tones, "wave light skin tone" to "wave dark skin
   tone". Skin pixels are those near one of Twemoji's five skin colours (measured from the skin-tone swatches); a
   sample's lightness is their mean luma. Reported: the share of tone pairs (lighter by name before darker) whose
   samples are in that order of lightness (chance: 50%; a tone drawn without any skin counts half).
4. Prompt fidelity: --retrieval_samples samples per caption of the held-out test images; every test image is ranked
   by its distance to the sample (8x8 colour thumbnail plus foreground colour histogram: where the colours are and
   which colours are drawn, tolerant to a shift of a few pixels). Top-1 / top-5: the caption's own image is the
   nearest / among the 5 nearest (chance: k / the number of test images).
5. Stressed: 1-3 again, each prompt guided from itself without its colour or skin-tone words ("square" for "purple
   square", "wave" for "wave dark skin tone") at guidance 4 and temperature 0.7: what a colour word does once the
   other words are not amplified with it (docs/text.md#stressing-a-word).

Each figure is shown for the model's samples, for an untrained model of the same configuration (fresh weights: the
baseline), for the real images judged as if they were samples (the ceiling; retrieval: shifted, noisy copies of the
test images) and at chance. The real images are seen through the model's quantization first. The library code is
`pixelgpt.prompt_quality` (`measure_prompts`, `markdown`).
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from pixelgpt.default_data import load_emoji_dataset
from pixelgpt.prompt_quality import PROMPT_GUIDANCE, markdown, measure_prompts


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Trained text model folder (with its processor: train.py "
                   "--text_conditional saves both).")
    p.add_argument("--num_samples", type=positive, default=8,
                   help="Samples per colour, composition and skin-tone prompt.")
    p.add_argument("--retrieval_samples", type=positive, default=1, help="Samples per held-out caption (retrieval).")
    p.add_argument("--num_people", type=positive, default=6, help="People drawn in the five skin tones.")
    p.add_argument("--guidance_scale", type=float, default=PROMPT_GUIDANCE, help="Classifier-free guidance towards "
                   "the prompt (1 = none; default: what text runs judge at, the best measured).")
    p.add_argument("--seed", type=int, default=0, help="Seed for the samples and the untrained model's weights.")
    p.add_argument("--batch_size", type=positive, default=64, help="Images sampled together.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="Where to sample (default: cuda when available).")
    p.add_argument("--output_json", help="Write the report as JSON here.")
    return p


def main(args):
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval().to(args.device)
    if not getattr(model.config, "text_vocab_size", 0):
        raise SystemExit(f"prompt_quality.py: error: {args.model} is not a text model (train one with "
                         "train.py --text_conditional).")
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    real = load_emoji_dataset(grid_repeats=1, recoloured_copies=0)  # each real emoji once, no recoloured copies
    report = measure_prompts(model, real, num_samples=args.num_samples,
                             guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
                             num_people=args.num_people, retrieval_samples=args.retrieval_samples, processor=processor)
    print(markdown(report))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(build_parser().parse_args())
