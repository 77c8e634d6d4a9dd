"""The `pixelgpt` command: train, generate and transform images from the shell.

    pixelgpt train --output_dir pixelgpt-fashion                 # same flags as examples/train.py
    pixelgpt train-tokenizer --train_data_dir emoji              # same flags as examples/train_tokenizer.py
    pixelgpt generate --model pixelgpt-fashion --num_images 16 --output_dir samples
    pixelgpt inpaint --model inpaint-model --mask mask.png photo.png --num_samples 4
    pixelgpt eval --model pixelgpt-fashion held_out/            # bits per token of image files
    pixelgpt demo --model pixelgpt-fashion --model inpaint-model # a web page for every operation (gradio)

`--model` is a local folder or a Hub repo id, loaded with the code saved beside it (trust_remote_code=True).
Outputs are PNG files named after the inputs: `<name>-<k>.png` (`sample-<i>.png` for generate), where an image
found in a folder keeps its path inside that folder; inputs that would share a name get `_2`, `_3`, ... An existing
file is never replaced unless `--overwrite` is given.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from pixelgpt.loading import load_model
from pixelgpt.utils import IMAGE_EXTENSIONS, TrainingError, image_files, open_image


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    p.add_argument("--output_dir", default="pixelgpt-outputs", help="Folder for the output PNG files.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator (same seed, same images).")
    p.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature; 0 = greedy.")
    p.add_argument("--top_k", type=int, default=None, help="Keep only the k most likely tokens.")
    p.add_argument("--top_p", type=float, default=None, help="Nucleus sampling threshold in (0, 1].")
    p.add_argument("--batch_size", type=int, default=16, help="Images sampled together.")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    p.add_argument("--overwrite", action="store_true", help="Replace output files that already exist.")


def _parallel_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens_per_step", type=int, default=1,
                   help="k tokens per forward pass, for a model trained with --parallel_tokens k. APPROXIMATE "
                   "unless --exact is given: k tokens drawn independently (k times fewer passes, lower quality).")
    p.add_argument("--exact", action="store_true",
                   help="With --tokens_per_step k: exact speculative sampling, images distributed exactly as one "
                   "token per pass would draw them, in 1 to k tokens per pass.")


def _inputs_flag(p: argparse.ArgumentParser, what: str = "Input image files or folders of images.") -> None:
    p.add_argument("inputs", nargs="+", help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("train", help="Train a model (`pixelgpt train --help` lists the flags, as examples/train.py).",
                   add_help=False)
    sub.add_parser("train-tokenizer", help="Train an image tokenizer for `train --tokenizer` (`pixelgpt "
                   "train-tokenizer --help` lists the flags, as examples/train_tokenizer.py).", add_help=False)

    p = sub.add_parser("generate", help="Draw new images.")
    _sampling_flags(p)
    p.add_argument("--num_images", type=int, default=8, help="Images to draw (per class label).")
    p.add_argument("--class_label", type=int, action="append", help="Class id (repeat for several classes).")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="Classifier-free guidance towards the class.")
    _parallel_flags(p)

    p = sub.add_parser("complete", help="Keep the top rows of images and draw the rest.")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--keep_rows", type=int, required=True, help="Pixel rows kept from the top (model grid).")
    p.add_argument("--num_samples", type=int, default=1, help="Completions per input.")
    _parallel_flags(p)

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

    p = sub.add_parser("demo", help='A web page with a tab for every operation of each model (`pip install '
                       'gradio`).')
    p.add_argument("--model", required=True, action="append", help="Model folder or Hub repo id (repeat for several).")
    p.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0: every network interface).")
    p.add_argument("--port", type=int, default=None, help="Port (default: 7860, or the next free one).")
    p.add_argument("--share", action="store_true", help="Also serve through a public gradio.live link (anyone with "
                   "the link can use it).")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="Ask every visitor for this user name and password (without "
                   "it, whoever reaches the page can use it).")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    return parser


def _image_files(inputs: list[str]) -> list[tuple[Path, str]]:
    """(file, output name) for every input image: a file keeps its stem, an image found in a folder its path inside
    that folder (without suffix); names that would repeat get `_2`, `_3`, ... so that no output replaces another."""
    found = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise SystemExit(f"pixelgpt: {path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
            found.extend((f, f.relative_to(path).with_suffix("").as_posix()) for f in files)
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise SystemExit(f"pixelgpt: {path} is neither an image file nor a folder.")
    used, named = set(), []
    for file, stem in found:
        unique, n = stem, 1
        while unique in used:
            n += 1
            unique = f"{stem}_{n}"
        used.add(unique)
        named.append((file, unique))
    return named


def _open(path: Path):
    return open_image(str(path), str(path))  # a ValueError naming the file, which `run` prints as one line


def _output_paths(args, names: list[str]) -> list[Path]:
    """Where the outputs go, checked before any sampling: the folder must be a folder, and no file is replaced
    without --overwrite."""
    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"pixelgpt: --output_dir {folder} is a file, not a folder.")
    paths = [folder / f"{name}.png" for name in names]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise SystemExit(f"pixelgpt: {', '.join(existing[:3])}{more} already exist; pass --overwrite to replace "
                         "them, or choose another --output_dir.")
    return paths


def _save(images, paths: list[Path]) -> list[Path]:
    for image, path in zip(images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # hand every flag to the training library, --help included
        from pixelgpt import training

        training.main(training.parse_args(argv[1:]))
        return 0
    if argv[:1] == ["train-tokenizer"]:
        from pixelgpt import training

        training.tokenizer_main(training.parse_tokenizer_args(argv[1:]))
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from pixelgpt import demo

        auth = demo.parse_auth(args.auth) if args.auth is not None else None  # one line each, before models load
        if importlib.util.find_spec("gradio") is None:
            raise SystemExit(f"pixelgpt: {demo.GRADIO_MISSING}")
        demo.launch(args.model, device=args.device, server_name=args.host, server_port=args.port, share=args.share,
                    auth=auth)
        return 0
    # Bad input paths and output files fail before the model loads.
    named = _image_files(args.inputs) if args.command != "generate" else []
    files = [file for file, _ in named]
    if args.command == "generate":
        count = args.num_images * len(args.class_label or [None])
        paths = _output_paths(args, [f"sample-{i:04d}" for i in range(count)])
    elif args.command != "eval":
        repeats = getattr(args, "num_samples", 1)
        paths = _output_paths(args, [f"{name}-{k}" for _, name in named for k in range(repeats)])
    model = load_model(args.model, args.device)
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
                                       exact=args.exact, **sampling)
    else:
        inputs = [_open(f) for f in files]
        if args.command == "complete":
            images = model.complete_images(inputs, args.keep_rows, num_completions=repeats,
                                           tokens_per_step=args.tokens_per_step, exact=args.exact, **sampling)
        elif args.command == "inpaint":
            images = model.inpaint_images(inputs, _open(Path(args.mask)), num_samples=repeats, **sampling)
        elif args.command == "outpaint":
            images = model.outpaint_images(inputs, left=args.left, right=args.right, top=args.top,
                                           bottom=args.bottom, **sampling)
        elif args.command == "vary":
            images = model.vary_images(inputs, strength=args.strength, num_variations=repeats, **sampling)
        else:
            images = getattr(model, f"{args.command}_images")(inputs, num_samples=repeats, **sampling)
    _save(images, paths)
    print(f"wrote {len(paths)} image(s) to {Path(args.output_dir).resolve()}")
    return 0


def run() -> None:
    """Console entry point: bad arguments and inputs exit with a message, not a traceback."""
    try:
        sys.exit(main())
    except (ValueError, TrainingError) as err:
        sys.exit(f"pixelgpt: {err}")


if __name__ == "__main__":
    run()
