"""A web demo of PixelGPT models (gradio): one tab per operation each model can do (`config.operations`).

    pixelgpt demo --model pixelgpt-fashion --model inpaint-fashion     # the command
    python app.py                                                      # a Hugging Face Space (see app.py)

gradio is an optional extra (`pip install -e ".[demo]"` in a clone), imported only when a demo is built, so the library
never needs it. Every tab calls the model method `pixelgpt <operation>` calls (`<operation>_images`), with its
widgets named after that method's keyword arguments.

A text model (trained with --text_conditional) gets a prompt box on every tab: what to draw, or to redraw the image
towards; an empty prompt draws unconditionally. A negative prompt and the guidance scale sit beside it: guidance > 1
steers towards the prompt and away from the empty prompt, or from the negative prompt when one is given. Under the
box, a note names the words the model never saw in its captions (it reads them as word pieces), or says the prompt is
too long. Models without text show no prompt box.

The demo has no login unless `auth` is given, and whoever reaches it runs the model on this machine. The page names
a model by its folder's name or Hub id, never by a local path. Every file it serves (uploads, results) lives in one
folder per process, `pixelgpt-demo-*` in the temporary folder (gradio's GRADIO_TEMP_DIR is pointed at it), kept to
the newest MAX_OUTPUT_FILES files and MAX_OUTPUT_BYTES bytes and removed when the process ends (on SIGTERM too,
under a blocking `launch`).
"""

import atexit
import base64
import contextlib
import io
import os
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelgpt.loading import load_model
from pixelgpt.prompt_quality import PROMPT_GUIDANCE
from pixelgpt.utils import class_name, enlarge_nearest

GRADIO_MISSING = 'The demo needs gradio: pip install gradio (or, in a clone, pip install -e ".[demo]")'
# Model images are a few dozen pixels wide: the browser must not blur them when it scales them up, and an input
# image is shown filling its box (gradio shows it at its own size: 28 pixels is a thumbnail).
CSS = """img, canvas { image-rendering: pixelated; }
.pixel-input .image-frame, .pixel-input img { width: 100%; height: 256px; object-fit: contain; }"""
DISPLAY_SIZE = 256  # outputs are shown enlarged (whole pixels) to at least this many pixels a side
# The widget that sets how many results a method draws, by operation (outpaint draws one per input).
COUNT = {"generate": "num_images", "complete": "num_completions", "vary": "num_variations", "outpaint": None}
# Bounds of the demo's folder: past them the oldest files go (about 60 calls of 8 images, each kept at the model's
# size and enlarged), and of an upload: larger files gradio refuses, images with more pixels the demo refuses
# before decoding them (a small file can hold a huge image).
MAX_OUTPUT_FILES = 1000
MAX_OUTPUT_BYTES = 500 * 2**20
MAX_UPLOAD_BYTES = "20mb"
MAX_UPLOAD_PIXELS = 4096 * 4096
_OUTPUTS: Path | None = None  # this process's folder, made by outputs_folder()


def outputs_folder() -> Path:
    """This process's folder for every file the demo serves: made on first use (in GRADIO_TEMP_DIR if set, else the
    system's temporary folder) and removed at exit; GRADIO_TEMP_DIR is pointed at it, so that gradio keeps uploads
    and results there too (and accepts uploads from there only)."""
    global _OUTPUTS
    if _OUTPUTS is None:
        parent = os.environ.get("GRADIO_TEMP_DIR") or None
        if parent:
            os.makedirs(parent, exist_ok=True)
        _OUTPUTS = Path(tempfile.mkdtemp(prefix="pixelgpt-demo-", dir=parent))
        atexit.register(shutil.rmtree, _OUTPUTS, ignore_errors=True)
    _OUTPUTS.mkdir(parents=True, exist_ok=True)  # again, should a cleaner of the temporary folder have removed it
    os.environ["GRADIO_TEMP_DIR"] = str(_OUTPUTS)
    return _OUTPUTS


def prune(folder: Path, max_files: int, max_bytes: int) -> None:
    """Remove the oldest files under `folder` until at most `max_files` files of at most `max_bytes` bytes in all
    remain, and the folders that leaves empty."""
    files = []
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # gradio may remove or add files meanwhile
            if path.is_file():
                files.append((path.stat().st_mtime, path.stat().st_size, path))
    files.sort(key=lambda file: file[0], reverse=True)  # newest first
    emptied, total = set(), 0
    for count, (_, size, path) in enumerate(files, 1):
        total += size
        if count > max_files or total > max_bytes:
            path.unlink(missing_ok=True)
            emptied.add(path.parent)
    for parent in emptied - {folder}:
        with contextlib.suppress(OSError):  # not empty (a file arrived meanwhile): kept
            parent.rmdir()


def model_name(name: str) -> str:
    """What the page calls model `name`: a local folder by its own name (its path would tell every visitor where it
    lives on this machine), a Hub repo id as it is."""
    folder = Path(name).expanduser()
    return (folder.resolve().name or "model") if folder.is_dir() else name


def parse_auth(value: str, source: str = "--auth") -> tuple[str, str]:
    """`user:password` (from `source`) as gradio's `auth=(user, password)`; the password may hold colons. Anything
    else is a ValueError, which never repeats the value (it may be a password)."""
    user, colon, password = value.partition(":")
    if not (colon and user and password):
        got = "has no colon" if not colon else "leaves the user name or the password empty"
        raise ValueError(f"{source} takes user:password, a user name and a password separated by a colon; the value "
                         f"given {got}.")
    return user, password


def check_upload(source, what: str = "the upload") -> None:
    """An uploaded file (a path, or bytes) as the demo takes it: an image PIL can decode, of at most
    MAX_UPLOAD_PIXELS pixels (checked before decoding it); anything else is a ValueError saying what is accepted.
    PIL's own messages are not repeated: they hold the file's path on this machine."""
    limit = f"the demo takes images of up to {MAX_UPLOAD_PIXELS:,} pixels (e.g. 4096x4096): scale it down first"
    try:
        with warnings.catch_warnings():  # PIL warns of large images; they are refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise ValueError(f"{what} is no longer on the server (the demo keeps its newest {MAX_OUTPUT_FILES} files); "
                         "upload it again.") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{what} has too many pixels; {limit}.") from None
    except Exception as err:  # PIL raises many types for files it cannot read
        raise ValueError(f"{what} is not an image file the demo can read ({type(err).__name__}); upload a PNG, "
                         "JPEG, WebP, GIF or BMP image.") from None
    with image:
        width, height = image.size
        if width * height > MAX_UPLOAD_PIXELS:
            raise ValueError(f"{what} is {width}x{height} pixels; {limit}.")
        try:
            image.load()
        except Exception as err:
            raise ValueError(f"{what} is a damaged or unsupported {image.format} file ({type(err).__name__}); "
                             "upload a PNG, JPEG, WebP, GIF or BMP image.") from None


def _upload_sources(component, payload) -> list:
    """The files (paths, or bytes) of an upload as gradio hands it to `component.preprocess`: an image's file, or
    the image editor's background, layers and composite (sent as files, as `data:` URLs, or as blobs the editor holds
    by id)."""
    def found(value) -> list:
        if isinstance(value, bytes):
            return [value]
        if isinstance(value, str) and value.startswith("data:"):  # gradio decodes these instead of the file
            try:
                return [base64.b64decode(value.partition(",")[2])]
            except ValueError:
                return [b""]  # not an image, which check_upload says
        if isinstance(value, (list, tuple)):
            return [source for item in value for source in found(item)]
        if isinstance(value, dict):
            own = [value["path"]] if isinstance(value.get("path"), str) else []
            return own + [source for key, item in value.items() if key != "path" for source in found(item)]
        return []

    blobs = getattr(component, "blob_storage", {}).get(getattr(payload, "id", None))
    return found(payload.model_dump() if payload is not None else None) + found(blobs.model_dump() if blobs else None)


def _checked_uploads(gr, component):
    """`component`, its uploads checked by `check_upload` before gradio decodes them: a file that is not an image,
    or too large, is the page's one-line message instead of gradio's "Error"."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            for source in _upload_sources(component, payload):
                check_upload(source)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return preprocess(payload)

    component.preprocess = checked
    return component


def _editor_inputs(editor: dict, processor) -> tuple[Image.Image, np.ndarray]:
    """The image and mask of the image editor's value: the upload and the model pixels the brush touched on its
    layers (`(S, S)` bool, True = redraw). The layers are at the upload's size; resized as the processor resizes the
    image, but by area, so that a thin stroke on a large upload still marks every model pixel it crosses (the library
    resizes masks by nearest neighbour). A mask with nothing to redraw is a ValueError saying why."""
    image = editor["background"]
    painted = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in editor["layers"]]
    painted = np.any(painted, axis=0) if painted else np.zeros(image.size[::-1], dtype=bool)
    area = type(processor)(quantization="gray8", image_size=processor.image_size, resize_mode=processor.resize_mode,
                           resample="box", background=processor.background)
    mask = area.to_array(Image.fromarray(painted.astype(np.uint8) * 255))[0, ..., 0] > 0
    if not painted.any():
        raise ValueError("Paint over the pixels to redraw first: nothing was painted.")
    if not mask.any():
        side = min(image.size)  # the part the model reads: all of it, or the centre square ("crop")
        left, top = (image.width - side) // 2, (image.height - side) // 2
        if processor.resize_mode != "crop" or painted[top:top + side, left:left + side].any():
            raise ValueError(f"What was painted is too thin to cover any of the model's pixels (it sees this upload "
                             f"as {processor.image_size}x{processor.image_size}): paint with a larger brush.")
        raise ValueError(f"Everything painted lies outside the centre square of this {image.width}x{image.height} "
                         "upload, the only part the model reads: paint inside it.")
    return image, mask


def prompt_note(processor, prompt: str) -> str:
    """The note under a prompt box: the words of `prompt` the model never saw in its captions (punctuation aside), or
    why the prompt is refused (too long); "" when there is nothing to say."""
    if not (prompt or "").strip():
        return ""
    try:
        processor.encode_prompts(prompt)
    except ValueError as err:
        return str(err)
    unknown = [word for word in processor.unknown_words(prompt) if any(c.isalnum() for c in word)]
    if not unknown:
        return ""
    words = ", ".join(f"“{word}”" for word in dict.fromkeys(unknown))
    return f"Words the model never saw in its captions: {words} (it reads them as word pieces)."


def _prompt_widgets(gr, processor, key: str, w: dict) -> None:
    """A text model's prompt box, the note under it (`prompt_note`, updated as the prompt changes) and its negative
    prompt box, added to `w` as `prompt` and `negative_prompt`."""
    w["prompt"] = gr.Textbox(label="Prompt", placeholder="e.g. a red heart (empty: draw unconditionally)",
                             max_lines=1, elem_id=f"{key}-prompt")
    note = gr.Markdown("", visible=False, elem_id=f"{key}-prompt-note")
    w["negative_prompt"] = gr.Textbox(label="Negative prompt", placeholder="what guidance steers away from (optional)",
                                      max_lines=1, elem_id=f"{key}-negative")

    def show_note(prompt):
        text = prompt_note(processor, prompt)
        return gr.Markdown(text, visible=bool(text))

    w["prompt"].change(show_note, inputs=w["prompt"], outputs=note, queue=False, show_progress="hidden",
                       api_visibility="private")


def _guidance_widget(gr, config, key: str):
    """The guidance slider: towards the prompt of a text model, towards the class of a class-conditional one."""
    if config.is_text_conditional:
        info = ("Classifier-free guidance towards the prompt and away from the negative prompt, or from the empty "
                f"one (1 = none; {PROMPT_GUIDANCE:g}: the best measured, docs/text.md; unused when both are empty).")
    else:
        info = ("Classifier-free guidance towards the class (1 = none; 3: the best class match measured, "
                "docs/quality.md; unused with 'none').")
    value = PROMPT_GUIDANCE if config.is_text_conditional else 3
    return gr.Slider(0, 5, value=value, step=0.1, label="Guidance scale", info=info, elem_id=f"{key}-guidance")


def _operation_widgets(gr, config, op: str, key: str, processor=None) -> dict:
    """The inputs and settings of tab `op`, named after the keyword arguments of `model.<op>_images`; a text model's
    prompt boxes with `processor` (its PixelGPTProcessor)."""
    size, w = config.pixel_size, {}
    if op == "generate" and config.is_text_conditional:
        _prompt_widgets(gr, processor, key, w)
    if op == "generate" and config.num_classes:
        names = [(f"{i}: {class_name(config, i)}" if class_name(config, i) else str(i), i)
                 for i in range(config.num_classes)]
        w["class_labels"] = gr.Dropdown(names + [("none (unconditional)", -1)], value=0, label="Class",
                                        elem_id=f"{key}-class")
    if op == "generate" and (config.num_classes or config.is_text_conditional):
        w["guidance_scale"] = _guidance_widget(gr, config, key)
    elif op == "inpaint":
        # Brush sizes count pixels of the upload: gradio's default (25) would cover a whole model-sized
        # image. PNG, as webp would change the pixels kept around the mask.
        brush = gr.Brush(default_size=3, colors=["#ff00ff"], color_mode="fixed")
        w["editor"] = _checked_uploads(gr, gr.ImageEditor(
            type="pil", label="Paint over the pixels to redraw", layers=False, transforms=(), brush=brush,
            format="png", elem_id=f"{key}-input"))
    elif op != "generate":
        # image_mode=None keeps transparency: the image processor flattens it on its own background.
        w["images"] = _checked_uploads(gr, gr.Image(type="pil", image_mode=None, label="Input image",
                                                     elem_id=f"{key}-input", elem_classes="pixel-input"))
    if op != "generate" and config.is_text_conditional:  # the prompt the image is redrawn towards
        _prompt_widgets(gr, processor, key, w)
        w["guidance_scale"] = _guidance_widget(gr, config, key)
    if op == "complete":
        w["keep_rows"] = gr.Slider(0, size, value=size // 2, step=1, precision=0, label="Rows kept from the top")
    elif op == "outpaint":
        for side in ("left", "right", "top", "bottom"):
            w[side] = gr.Slider(0, size, value=size // 2 if side == "right" else 0, step=1, precision=0,
                                label=f"Pixels added on the {side}")
    elif op == "vary":
        w["strength"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Strength (share of pixels redrawn)")
    count = COUNT.get(op, "num_samples")
    if count:
        w[count] = gr.Slider(1, 16, value=8 if op == "generate" else 4, step=1, precision=0, label="Images")
    with gr.Accordion("Sampling", open=False):
        w["temperature"] = gr.Slider(0, 2, value=1, step=0.05, label="Temperature (0 = greedy)")
        w["top_k"] = gr.Slider(0, config.vocab_size, value=0, step=1, precision=0, label="Top-k (0 = off)")
        w["top_p"] = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (1 = off)")
        w["seed"] = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed (same seed, same images)")
    return w


def _draw(model, op: str, kwargs: dict, outputs: Path) -> tuple[list[str], list[str]]:
    """`model.<op>_images` on the widgets' values `kwargs`; returns the PNG files of the results, enlarged (whole
    pixels) and at the model's size. A bad input is a ValueError saying what to change."""
    generator = torch.Generator().manual_seed(kwargs.pop("seed") or 0)
    if kwargs.get("class_labels") == -1:  # class "none"
        kwargs["class_labels"] = None
    if "prompt" in kwargs:  # a text model: an empty prompt (and negative prompt) is none
        prompt, negative = kwargs.pop("prompt") or "", kwargs.pop("negative_prompt") or ""
        kwargs.update({name: text for name, text in (("prompt", prompt), ("negative_prompt", negative))
                       if text.strip()})
    if kwargs.get("class_labels") is None and not {"prompt", "negative_prompt"} & set(kwargs):
        kwargs.pop("guidance_scale", None)  # unconditional: nothing for the guidance slider to guide towards
    editor = kwargs.pop("editor", None)
    if editor is not None and editor["background"] is not None:
        kwargs["images"], kwargs["mask_image"] = _editor_inputs(editor, model.get_image_processor())
    if op != "generate" and kwargs.get("images") is None:
        raise ValueError("Upload an input image first.")
    images = getattr(model, f"{op}_images")(**kwargs, generator=generator, show_progress=True)
    # One folder per call, in the demo's folder: gradio serves files from there without copying them.
    folder = Path(tempfile.mkdtemp(prefix=f"{op}-", dir=outputs))
    shown, files = [], []
    for i, image in enumerate(images):
        files.append(str(folder / f"{op}-{i:04d}.png"))
        shown.append(str(folder / f"{op}-{i:04d}-enlarged.png"))
        image.save(files[-1])
        enlarge_nearest(image, DISPLAY_SIZE, longer_side=True).save(shown[-1])
    prune(outputs, MAX_OUTPUT_FILES, MAX_OUTPUT_BYTES)  # the newest files stay: this call's among them
    return shown, files


def _draw_function(gr, model, op: str, w: dict, outputs: Path):
    """The Run button's callback: `_draw` on the values of widgets `w`; a bad input is a gr.Error shown in the page
    (the library's message)."""
    progress = gr.Progress(track_tqdm=True)  # the model's tqdm bar (show_progress=True) becomes the page's

    def draw(values: dict, progress=progress):
        try:
            return _draw(model, op, {name: values[widget] for name, widget in w.items()}, outputs)
        except ValueError as err:  # the library's message says what to change
            raise gr.Error(str(err)) from None
        except RuntimeError as err:  # e.g. out of memory: say what happened rather than a bare "Error"
            raise gr.Error(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (try fewer "
                           "images)") from None

    return draw


def _operation_tab(gr, model, op: str, key: str, outputs: Path) -> None:
    """The tab of one operation: its inputs, sampling settings, a Run button, the enlarged results and their
    PNG files (written under `outputs`). Element ids are `<key>-input`, `-prompt`, `-prompt-note`, `-negative`,
    `-guidance`, `-run`, `-gallery`, `-files` (the browser tests find them)."""
    size = model.config.pixel_size
    with gr.Tab(op.capitalize()), gr.Row():
        with gr.Column():
            w = _operation_widgets(gr, model.config, op, key, model.processor)
            run = gr.Button("Run", variant="primary", elem_id=f"{key}-run")
        with gr.Column():
            gallery = gr.Gallery(label=f"Results (shown enlarged; model size {size}x{size})", format="png",
                                 columns=4, object_fit="contain", elem_id=f"{key}-gallery")
            files = gr.File(label="PNG files at the model's size", file_count="multiple", height=200,
                            elem_id=f"{key}-files")
    # One model call at a time, whichever tab asks: sampling seeds torch's global generator (forked per call) and
    # packs the layers' weights for the call, unpacking them after, so two calls at once would disturb each other.
    run.click(_draw_function(gr, model, op, w, outputs), inputs=set(w.values()), outputs=[gallery, files],
              concurrency_id="model", concurrency_limit=1)


def build_demo(models: list[str], device: str | None = None):
    """The gradio Blocks for model folders / Hub repo ids `models`: one tab per operation of each model (and one
    tab per model when there are several), each model named by `model_name`. A model that cannot be loaded is a
    ValueError saying why."""
    # No usage reports to gradio's servers unless the user turns them on (and none on machines without internet).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Before gradio is imported (some of its folders are fixed then) and the Blocks made (its components take their
    # folder from GRADIO_TEMP_DIR when made). Files gradio knows of are also deleted after an hour.
    outputs = outputs_folder()
    try:
        import gradio as gr
    except ImportError:
        raise ImportError(GRADIO_MISSING) from None
    loaded = [load_model(name, device) for name in models]
    for model in loaded:
        model.get_image_processor()  # a missing or mismatched processor fails now, not at the first click
        if model.config.is_text_conditional:
            model.get_prompt_processor()  # and so does a text model's missing prompt tokenizer
    names, seen = [], {}
    for name in map(model_name, models):  # two folders of the same name: "name", "name (2)"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    with gr.Blocks(title="PixelGPT", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# PixelGPT\nAn autoregressive image transformer, pixel by pixel.")
        for index, (name, model) in enumerate(zip(names, loaded)):
            config = model.config
            with gr.Tab(name) if len(models) > 1 else contextlib.nullcontext():
                classes = f", {config.num_classes} classes" if config.num_classes else ""
                classes += ", text prompts" if config.is_text_conditional else ""
                gr.Markdown(f"`{name}`: task `{config.task}`, {config.pixel_size}x{config.pixel_size} pixels{classes}")
                with gr.Tabs():
                    for op in config.operations:
                        _operation_tab(gr, model, op, f"m{index}-{op}", outputs)
    return app


def _interrupt(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # once: a second SIGTERM (to the process group, say) must not cut it short
    raise KeyboardInterrupt  # gradio closes its server on it; the process then ends as usual, running atexit


def launch(models: list[str], device: str | None = None, **launch_kwargs):
    """Build the demo and serve it with `Blocks.launch(**launch_kwargs)` (blocks until stopped, unless
    `prevent_thread_lock=True`); returns the Blocks (`.local_url`, `.close()`). Uploads are limited to
    MAX_UPLOAD_BYTES unless `max_file_size` says otherwise. A port outside 1..65535 is a ValueError, before any model
    loads. Blocking in the main thread, SIGTERM stops the demo as Ctrl-C does, so that its folder is removed."""
    port = launch_kwargs.get("server_port")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not a port number: give one in 1..65535 (or none: 7860, or the next free "
                         "one).")
    launch_kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
    blocking = not launch_kwargs.get("prevent_thread_lock") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if blocking else None
    try:
        app = build_demo(models, device)
        app.launch(css=CSS, **launch_kwargs)
    finally:
        if blocking:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return app
