"""A web demo of PixelGPT models (gradio): one tab per operation each model can do (`config.operations`).

    pixelgpt demo --model pixelgpt-fashion --model inpaint-fashion     # the command
    python app.py                                                      # a Hugging Face Space (see app.py)

gradio is an optional extra (`pip install -e ".[demo]"` in a clone), imported only when a demo is built, so the library
never needs it. Every tab calls the model method `pixelgpt <operation>` calls (`<operation>_images`), with its
widgets named after that method's keyword arguments.
"""

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelgpt.loading import load_model
from pixelgpt.utils import enlarge_nearest

GRADIO_MISSING = 'The demo needs gradio: pip install gradio (or, in a clone, pip install -e ".[demo]")'
# Model images are a few dozen pixels wide: the browser must not blur them when it scales them up, and an input
# image is shown filling its box (gradio shows it at its own size: 28 pixels is a thumbnail).
CSS = """img, canvas { image-rendering: pixelated; }
.pixel-input .image-frame, .pixel-input img { width: 100%; height: 256px; object-fit: contain; }"""
DISPLAY_SIZE = 256  # outputs are shown enlarged (whole pixels) to at least this many pixels a side
# The widget that sets how many results a method draws, by operation (outpaint draws one per input).
COUNT = {"generate": "num_images", "complete": "num_completions", "vary": "num_variations", "outpaint": None}


def _mask(editor: dict, processor) -> np.ndarray:
    """The model pixels the brush touched on the editor's layers: `(S, S)` bool, True = redraw. The layers are at
    the upload's size; resized as the processor resizes the image, but by area, so that a thin stroke on a large
    upload still marks every model pixel it crosses (the library resizes masks by nearest neighbour)."""
    painted = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in editor["layers"]]
    painted = np.any(painted, axis=0) if painted else np.zeros(editor["background"].size[::-1], dtype=bool)
    area = type(processor)(quantization="gray8", image_size=processor.image_size, resize_mode=processor.resize_mode,
                           resample="box", background=processor.background)
    return area.to_array(Image.fromarray(painted.astype(np.uint8) * 255))[0, ..., 0] > 0


def _operation_widgets(gr, config, op: str, key: str) -> dict:
    """The inputs and settings of tab `op`, named after the keyword arguments of `model.<op>_images`."""
    size, w = config.pixel_size, {}
    if op == "generate" and config.num_classes:
        # Class names where training saved them (id2label), else transformers' LABEL_<i> placeholders.
        names = [(f"{i}: {config.id2label[i]}" if config.id2label.get(i, f"LABEL_{i}") != f"LABEL_{i}"
                  else str(i), i) for i in range(config.num_classes)]
        w["class_labels"] = gr.Dropdown(names + [("none (unconditional)", -1)], value=0, label="Class",
                                        elem_id=f"{key}-class")
        w["guidance_scale"] = gr.Slider(0, 5, value=1, step=0.1, label="Guidance scale",
                                        info="Classifier-free guidance towards the class (1 = none).",
                                        elem_id=f"{key}-guidance")
    elif op == "inpaint":
        # Brush sizes count pixels of the upload: gradio's default (25) would cover a whole model-sized
        # image. PNG, as webp would change the pixels kept around the mask.
        brush = gr.Brush(default_size=3, colors=["#ff00ff"], color_mode="fixed")
        w["editor"] = gr.ImageEditor(type="pil", label="Paint over the pixels to redraw", layers=False,
                                     transforms=(), brush=brush, format="png", elem_id=f"{key}-input")
    elif op != "generate":
        # image_mode=None keeps transparency: the image processor flattens it on its own background.
        w["images"] = gr.Image(type="pil", image_mode=None, label="Input image", elem_id=f"{key}-input",
                               elem_classes="pixel-input")
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


def _draw_function(gr, model, op: str, w: dict, outputs: Path):
    """The Run button's callback: `model.<op>_images` on the values of widgets `w`, returning the enlarged results
    and the paths of their PNG files (written under `outputs`); a bad input is a gr.Error shown in the page."""
    progress = gr.Progress(track_tqdm=True)  # the model's tqdm bar (show_progress=True) becomes the page's

    def draw(values: dict, progress=progress):
        kwargs = {name: values[widget] for name, widget in w.items()}
        generator = torch.Generator().manual_seed(kwargs.pop("seed") or 0)
        if kwargs.get("class_labels") == -1:
            kwargs["class_labels"] = None
        editor = kwargs.pop("editor", None)
        if editor is not None and editor["background"] is not None:
            kwargs["images"], kwargs["mask_image"] = editor["background"], _mask(editor, model.get_image_processor())
            if not kwargs["mask_image"].any():
                where = (" (on a non-square upload only the centre square, which the model reads, counts)"
                         if model.get_image_processor().resize_mode == "crop" else "")
                raise gr.Error(f"Paint over the pixels to redraw first{where}.")
        if op != "generate" and kwargs.get("images") is None:
            raise gr.Error("Upload an input image first.")
        try:
            images = getattr(model, f"{op}_images")(**kwargs, generator=generator, show_progress=True)
        except ValueError as err:  # the library's message says what to change
            raise gr.Error(str(err)) from None
        except RuntimeError as err:  # e.g. out of memory: say what happened rather than a bare "Error"
            raise gr.Error(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (try fewer "
                           "images)") from None
        folder = Path(tempfile.mkdtemp(prefix=f"{op}-", dir=outputs))  # gradio copies the files into its cache
        paths = [str(folder / f"{op}-{i:04d}.png") for i in range(len(images))]
        for image, path in zip(images, paths):
            image.save(path)
        return [enlarge_nearest(image, DISPLAY_SIZE, longer_side=True) for image in images], paths

    return draw


def _operation_tab(gr, model, op: str, key: str, outputs: Path) -> None:
    """The tab of one operation: its inputs, sampling settings, a Run button, the enlarged results and their
    PNG files (written under `outputs`). Element ids are `<key>-input`, `-run`, `-gallery`, `-files` (the browser
    tests find them)."""
    size = model.config.pixel_size
    with gr.Tab(op.capitalize()), gr.Row():
        with gr.Column():
            w = _operation_widgets(gr, model.config, op, key)
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
    tab per model when there are several). A model that cannot be loaded is a ValueError saying why."""
    # No usage reports to gradio's servers unless the user turns them on (and none on machines without internet).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise ImportError(GRADIO_MISSING) from None
    loaded = [load_model(name, device) for name in models]
    for model in loaded:
        model.get_image_processor()  # a missing or mismatched processor fails now, not at the first click
    # The PNG files of every call go under one folder, removed when the demo's process ends; gradio's copies of them
    # (and of uploads) are deleted after an hour.
    outputs = tempfile.TemporaryDirectory(prefix="pixelgpt-demo-")
    with gr.Blocks(title="PixelGPT", delete_cache=(3600, 3600)) as app:
        app.pixelgpt_outputs = outputs  # lives as long as the app
        gr.Markdown("# PixelGPT\nAn autoregressive image transformer, pixel by pixel.")
        for index, (name, model) in enumerate(zip(models, loaded)):
            config = model.config
            with gr.Tab(name) if len(models) > 1 else contextlib.nullcontext():
                classes = f", {config.num_classes} classes" if config.num_classes else ""
                gr.Markdown(f"`{name}`: task `{config.task}`, {config.pixel_size}x{config.pixel_size} pixels{classes}")
                with gr.Tabs():
                    for op in config.operations:
                        _operation_tab(gr, model, op, f"m{index}-{op}", Path(outputs.name))
    return app


def launch(models: list[str], device: str | None = None, **launch_kwargs):
    """Build the demo and serve it with `Blocks.launch(**launch_kwargs)` (blocks until stopped, unless
    `prevent_thread_lock=True`); returns the Blocks (`.local_url`, `.close()`)."""
    app = build_demo(models, device)
    app.launch(css=CSS, **launch_kwargs)
    return app
