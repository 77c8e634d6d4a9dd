"""The `pixelgpt` command: train, generate and transform images from the shell.

    pixelgpt train --output_dir pixelgpt-fashion                 # same flags as examples/train.py
    pixelgpt train-tokenizer --train_data_dir emoji              # same flags as examples/train_tokenizer.py
    pixelgpt generate --model pixelgpt-fashion --num_images 16 --output_dir samples
    pixelgpt inpaint --model inpaint-model --mask mask.png photo.png --num_samples 4
    pixelgpt eval --model pixelgpt-fashion held_out/            # bits per token of image files
    pixelgpt demo --model pixelgpt-fashion --model inpaint-model # a web page for every operation (gradio)

Text models (trained with --text_conditional) also take prompts:

    pixelgpt generate --model emoji-text --prompt "a red square" --prompt "a blue circle" --guidance_scale 1.5
    pixelgpt vary --model emoji-text-inpaint --prompt "a green heart" photo.png

`--prompt` says what to draw (generate: repeat it, --num_images images each; "" draws unconditionally; the editing
commands: one prompt for every input); `--guidance_scale` > 1 steers towards it and away from the empty prompt, or
from `--negative_prompt` when one is given. Words the model never saw in its captions are named on stderr.

`--model` is a local folder or a Hub repo id, loaded with the code saved beside it (trust_remote_code=True).
Outputs are PNG files named after the inputs: `<name>-<k>.png` (`sample-<i>.png` for generate), where an image
found in a folder keeps its path inside that folder; with a prompt, the prompt (slugged: `a-red-square`) is in the
name too: `<name>-<prompt>-<k>.png`, and `<prompt>-<k>.png` for generate. Names that would repeat get `_2`, `_3`,
... An existing file is never replaced unless `--overwrite` is given.
"""

import argparse
import importlib.util
import json
import re
import sys
import unicodedata
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


def _prompt_flags(p: argparse.ArgumentParser, generate: bool = False) -> None:
    """--prompt, --negative_prompt (text models) and --guidance_scale."""
    if generate:
        p.add_argument("--prompt", action="append", help='Text prompt, for a text model (repeat for several prompts, '
                       '--num_images images each; "" draws unconditionally).')
    else:
        p.add_argument("--prompt", help="Text prompt for every input, for a text model: what the drawn pixels "
                       "should show.")
    p.add_argument("--negative_prompt", help="What guidance steers away from instead of the empty prompt (a text "
                   "model, with --guidance_scale > 1).")
    towards = "the class or the prompt" if generate else "the prompt"
    p.add_argument("--guidance_scale", type=float, default=1.0, help=f"Classifier-free guidance towards {towards} "
                   "(1 = none).")


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
    p.add_argument("--num_images", type=int, default=8, help="Images to draw (per class label or prompt).")
    p.add_argument("--class_label", type=int, action="append", help="Class id (repeat for several classes).")
    _prompt_flags(p, generate=True)
    _parallel_flags(p)

    p = sub.add_parser("complete", help="Keep the top rows of images and draw the rest.")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--keep_rows", type=int, required=True, help="Pixel rows kept from the top (model grid).")
    _prompt_flags(p)
    p.add_argument("--num_samples", type=int, default=1, help="Completions per input.")
    _parallel_flags(p)

    p = sub.add_parser("inpaint", help="Redraw the masked part of images (an inpainting model).")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--mask", required=True, help="Mask image: white = redraw (model grid size or image size).")
    _prompt_flags(p)
    p.add_argument("--num_samples", type=int, default=1, help="Results per input.")

    p = sub.add_parser("outpaint", help="Extend images beyond their borders (an inpainting model).")
    _sampling_flags(p)
    _inputs_flag(p)
    for side in ("left", "right", "top", "bottom"):
        p.add_argument(f"--{side}", type=int, default=0, help=f"Pixels to add on the {side} (model grid pixels).")
    _prompt_flags(p)

    p = sub.add_parser("vary", help="Variations that keep part of each image (an inpainting model).")
    _sampling_flags(p)
    _inputs_flag(p)
    p.add_argument("--strength", type=float, default=0.5, help="Share of pixels redrawn, 0 to 1.")
    _prompt_flags(p)
    p.add_argument("--num_samples", type=int, default=1, help="Variations per input.")

    for name, text in (("colorize", "Colour versions of grayscale images (a colorize model)."),
                       ("upscale", "Higher-resolution versions of small images (an upscale model)."),
                       ("translate", "Target images from source images (a translate model).")):
        p = sub.add_parser(name, help=text)
        _sampling_flags(p)
        _inputs_flag(p)
        p.add_argument("--num_samples", type=int, default=1, help="Results per input.")
        _prompt_flags(p)

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


def _unique(stems: list[str]) -> list[str]:
    """`stems` with those that would repeat made unique by `_2`, `_3`, ... (so that no output replaces another)."""
    used, unique_stems = set(), []
    for stem in stems:
        unique, n = stem, 1
        while unique in used:
            n += 1
            unique = f"{stem}_{n}"
        used.add(unique)
        unique_stems.append(unique)
    return unique_stems


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
    return list(zip([file for file, _ in found], _unique([stem for _, stem in found])))


def slug(prompt: str, limit: int = 48) -> str:
    """A prompt as a file name part: lower-case ASCII letters and digits joined by `-`, at most `limit` characters
    (cut at a word): "A red square!" -> "a-red-square"; "unconditional" for the empty prompt, "prompt" for one with
    no such character."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", text)
    name = ""
    for word in words:
        if len(name) + len(word) + bool(name) > limit:
            break
        name = f"{name}-{word}" if name else word
    return name or (words[0][:limit] if words else "prompt" if prompt.strip() else "unconditional")


def _output_names(args, named: list[tuple[Path, str]]) -> list[str]:
    """The output file names (without .png) of the command: see the module's docstring."""
    if args.command == "generate":
        if args.prompt is None:
            return [f"sample-{i:04d}" for i in range(args.num_images * len(args.class_label or [None]))]
        return [f"{name}-{k:04d}" for name in _unique([slug(p) for p in args.prompt]) for k in range(args.num_images)]
    about = f"-{slug(args.prompt)}" if args.prompt is not None else ""
    return [f"{name}{about}-{k}" for _, name in named for k in range(getattr(args, "num_samples", 1))]


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


def _check_prompts(args, model=None) -> dict:
    """The prompt keywords of the model method (`prompt`, `negative_prompt`), refused in one line where they cannot
    be used: with --class_label (before the model loads), or on a model without text. Words the model never saw
    in its captions are named on stderr (it reads them as word pieces)."""
    given = {name: getattr(args, name) for name in ("prompt", "negative_prompt") if getattr(args, name) is not None}
    if "prompt" in given and getattr(args, "class_label", None):
        raise SystemExit("pixelgpt: give --prompt or --class_label, not both (a text model draws from prompts).")
    if model is None or not given:
        return given
    if not model.config.is_text_conditional:
        flags = " / ".join(f"--{name}" for name in given)
        raise SystemExit(f"pixelgpt: {args.model} was trained without text prompts: {flags} need a text model "
                         "(train one with --text_conditional).")
    processor = model.get_prompt_processor()
    for prompt in dict.fromkeys(p for value in given.values() for p in ([value] if isinstance(value, str) else value)):
        unknown = [word for word in processor.unknown_words(prompt) if any(c.isalnum() for c in word)]
        if unknown:
            print(f"pixelgpt: note: the model never saw {', '.join(map(repr, unknown))} in its captions (in "
                  f"{prompt!r}); it reads them as word pieces.", file=sys.stderr)
    return given


def _transform(model, args, files: list[Path], sampling: dict) -> list:
    """The images of an editing command (complete, inpaint, ...) on the input `files`."""
    inputs, repeats = [_open(f) for f in files], getattr(args, "num_samples", 1)
    if args.command == "complete":
        return model.complete_images(inputs, args.keep_rows, num_completions=repeats,
                                     tokens_per_step=args.tokens_per_step, exact=args.exact, **sampling)
    if args.command == "inpaint":
        return model.inpaint_images(inputs, _open(Path(args.mask)), num_samples=repeats, **sampling)
    if args.command == "outpaint":
        return model.outpaint_images(inputs, left=args.left, right=args.right, top=args.top, bottom=args.bottom,
                                     **sampling)
    if args.command == "vary":
        return model.vary_images(inputs, strength=args.strength, num_variations=repeats, **sampling)
    return getattr(model, f"{args.command}_images")(inputs, num_samples=repeats, **sampling)


def _demo(args) -> int:
    from pixelgpt import demo

    auth = demo.parse_auth(args.auth) if args.auth is not None else None  # one line each, before models load
    if importlib.util.find_spec("gradio") is None:
        raise SystemExit(f"pixelgpt: {demo.GRADIO_MISSING}")
    demo.launch(args.model, device=args.device, server_name=args.host, server_port=args.port, share=args.share,
                auth=auth)
    return 0


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
        return _demo(args)
    # Bad flags, input paths and output files fail before the model loads.
    if args.command != "eval":
        _check_prompts(args)
    named = _image_files(args.inputs) if args.command != "generate" else []
    files = [file for file, _ in named]
    if args.command != "eval":
        paths = _output_paths(args, _output_names(args, named))
    model = load_model(args.model, args.device)
    if args.command == "eval":
        mask = None if args.mask is None else _open(Path(args.mask))
        bits = model.score_images([_open(f) for f in files], mask_image=mask, batch_size=args.batch_size,
                                  generator=torch.Generator().manual_seed(args.seed))
        print(json.dumps({"images": len(files), "bits_per_token": round(float(bits.mean()), 4)}))
        return 0
    model.config.check_operation(args.command)  # before any input is decoded or sampled
    sampling = dict(generator=torch.Generator().manual_seed(args.seed), temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, batch_size=args.batch_size,
                    guidance_scale=args.guidance_scale, **_check_prompts(args, model))
    if args.command == "generate":
        images = model.generate_images(args.num_images, class_labels=args.class_label,
                                       tokens_per_step=args.tokens_per_step, exact=args.exact, **sampling)
    else:
        images = _transform(model, args, files, sampling)
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
