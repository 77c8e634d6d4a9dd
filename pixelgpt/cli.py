"""The `pixelgpt` command: train, generate and transform images from the shell.

    pixelgpt train --output_dir pixelgpt-fashion                 # same flags as examples/train.py
    pixelgpt generate --model pixelgpt-fashion --num_images 16 --output_dir samples
    pixelgpt inpaint --model inpaint-model --mask mask.png photo.png --num_samples 4
    pixelgpt eval --model pixelgpt-fashion held_out/            # bits per token of image files

`--model` is a local folder or a Hub repo id, loaded with the code saved beside it (trust_remote_code=True).
Outputs are PNG files named after the inputs: `<stem>-<k>.png` (`sample-<i>.png` for generate).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from pixelgpt.utils import IMAGE_EXTENSIONS, open_image


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    p.add_argument("--output_dir", default="pixelgpt-outputs", help="Folder for the output PNG files.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator (same seed, same images).")
    p.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature; 0 = greedy.")
    p.add_argument("--top_k", type=int, default=None, help="Keep only the k most likely tokens.")
    p.add_argument("--top_p", type=float, default=None, help="Nucleus sampling threshold in (0, 1].")
    p.add_argument("--batch_size", type=int, default=16, help="Images sampled together.")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")


def _inputs_flag(p: argparse.ArgumentParser, what: str = "Input image files or folders of images.") -> None:
    p.add_argument("inputs", nargs="+", help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("train", help="Train a model (`pixelgpt train --help` lists the flags, as examples/train.py).",
                   add_help=False)

    p = sub.add_parser("generate", help="Draw new images.")
    _sampling_flags(p)
    p.add_argument("--num_images", type=int, default=8, help="Images to draw (per class label).")
    p.add_argument("--class_label", type=int, action="append", help="Class id (repeat for several classes).")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="Classifier-free guidance towards the class.")
    p.add_argument("--tokens_per_step", type=int, default=1, help="Tokens per pass (the model's parallel_tokens).")

    p = sub.add_parser("complete", help="Keep the top rows of images and draw the rest.")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--keep_rows", type=int, required=True, help="Pixel rows kept from the top (model grid).")
    p.add_argument("--num_samples", type=int, default=1, help="Completions per input.")

    p = sub.add_parser("inpaint", help="Redraw the masked part of images (an inpainting model).")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--mask", required=True, help="Mask image: white = redraw (model grid size or image size).")
    p.add_argument("--num_samples", type=int, default=1, help="Results per input.")

    p = sub.add_parser("outpaint", help="Extend images beyond their borders (an inpainting model).")
    _sampling_flags(p)
    _inputs_flag(p)
    for side in ("left", "right", "top", "bottom"):
        p.add_argument(f"--{side}", type=int, default=0, help=f"Pixels to add on the {side} (model grid pixels).")

    p = sub.add_parser("vary", help="Variations that keep part of each image (an inpainting model).")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--strength", type=float, default=0.5, help="Share of pixels redrawn, 0 to 1.")
    p.add_argument("--num_samples", type=int, default=1, help="Variations per input.")

    for name, text in (("colorize", "Colour versions of grayscale images (a colorize model)."),
                       ("upscale", "Higher-resolution versions of small images (an upscale model)."),
                       ("translate", "Target images from source images (a translate model).")):
        p = sub.add_parser(name, help=text)
        _sampling_flags(p)
        _inputs_flag(p)
        p.add_argument("--num_samples", type=int, default=1, help="Results per input.")

    p = sub.add_parser("eval", help="Held-out negative log-likelihood (bits per token) of image files.")
    p.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    _inputs_flag(p)
    p.add_argument("--mask", help="Score only the masked pixels (white), as inpainting would see them.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random orders of inpainting models.")
    p.add_argument("--batch_size", type=int, default=16, help="Images scored together.")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    return parser


def _image_files(inputs: list[str]) -> list[Path]:
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise SystemExit(f"pixelgpt: {path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"pixelgpt: {path} is neither an image file nor a folder.")
    return files


def _open(path: Path):
    return open_image(str(path), str(path))  # a ValueError naming the file, which `run` prints as one line


def _load_model(args):
    from transformers import AutoModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return AutoModel.from_pretrained(args.model, trust_remote_code=True).to(device).eval()


def _save(images, names: list[str], output_dir: str) -> list[Path]:
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png" for name in names]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # hand every flag to the training library, --help included
        from pixelgpt import training

        training.main(training.parse_args(argv[1:]))
        return 0
    args = build_parser().parse_args(argv)
    files = _image_files(args.inputs) if args.command != "generate" else []  # bad paths fail before the model loads
    model = _load_model(args)
    if args.command != "eval":
        model.config.check_operation(args.command)  # before any input is decoded or sampled
    if args.command == "eval":
        mask = None if args.mask is None else _open(Path(args.mask))
        bits = model.score_images([_open(f) for f in files], mask_image=mask, batch_size=args.batch_size,
                                  generator=torch.Generator().manual_seed(args.seed))
        print(json.dumps({"images": len(files), "bits_per_token": round(float(bits.mean()), 4)}))
        return 0

    sampling = dict(generator=torch.Generator().manual_seed(args.seed), temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, batch_size=args.batch_size)
    if args.command == "generate":
        images = model.generate_images(args.num_images, class_labels=args.class_label,
                                       guidance_scale=args.guidance_scale, tokens_per_step=args.tokens_per_step,
                                       **sampling)
        paths = _save(images, [f"sample-{i:04d}" for i in range(len(images))], args.output_dir)
    else:
        inputs = [_open(f) for f in files]
        repeats = getattr(args, "num_samples", 1)
        if args.command == "complete":
            images = model.complete_images(inputs, args.keep_rows, num_completions=repeats, **sampling)
        elif args.command == "inpaint":
            images = model.inpaint_images(inputs, _open(Path(args.mask)), num_samples=repeats, **sampling)
        elif args.command == "outpaint":
            images = model.outpaint_images(inputs, left=args.left, right=args.right, top=args.top,
                                           bottom=args.bottom, **sampling)
        elif args.command == "vary":
            images = model.vary_images(inputs, strength=args.strength, num_variations=repeats, **sampling)
        else:
            images = getattr(model, f"{args.command}_images")(inputs, num_samples=repeats, **sampling)
        paths = _save(images, [f"{f.stem}-{k}" for f in files for k in range(repeats)], args.output_dir)
    print(f"wrote {len(paths)} image(s) to {Path(args.output_dir).resolve()}")
    return 0


def run() -> None:
    """Console entry point: bad arguments and inputs exit with a message, not a traceback."""
    try:
        sys.exit(main())
    except ValueError as err:
        sys.exit(f"pixelgpt: {err}")


if __name__ == "__main__":
    run()
