"""`pipeline()` support: one pipeline class, saved beside every PixelGPT model, for its tasks.

    from transformers import pipeline
    draw = pipeline("unconditional-image-generation", model="user/pixelgpt-fashion", trust_remote_code=True)
    images = draw(num_images=4, generator=torch.Generator().manual_seed(0))
    edit = pipeline("image-to-image", model="user/pixelgpt-fashion-inpaint", trust_remote_code=True)
    filled = edit(image, mask_image=mask)
    paint = pipeline("text-to-image", model="user/pixelgpt-emoji-text", trust_remote_code=True)  # text models
    squares = paint("a red square", num_images=2, guidance_scale=3)

The pipeline is a thin front for the model's methods (`generate_images`, `inpaint_images`, ...): every keyword
argument is passed on, and the result is a list of PIL images. Which model does what is the config's `OPERATIONS`
table; "text-to-image" is saved only for text models (`config.is_text_conditional`). This file travels to the Hub
with the model, so it imports only its siblings.
"""

from transformers import Pipeline

from .configuration_pixelgpt import DEFAULT_OPERATION, OPERATIONS

IMAGE_TO_IMAGE = tuple(op for op in OPERATIONS if op != "generate")
TEXT_TO_IMAGE = "text-to-image"


class PixelGPTPipeline(Pipeline):
    """`unconditional-image-generation`: `pipe(num_images=1, class_labels=None, **sampling)`.
    `text-to-image` (text models): `pipe(prompt, num_images=1, negative_prompt=None, guidance_scale=1.0,
    **sampling)`: `prompt` a string or a list of strings (`num_images` images per prompt, the first prompt's
    first; "" draws unconditionally); `guidance_scale` > 1 steers towards the prompt and away from the empty prompt,
    or from `negative_prompt` when one is given.
    `image-to-image`: `pipe(images, operation=None, **arguments)` with `operation` one of complete, inpaint,
    outpaint, vary, colorize, upscale, translate; by default inpaint when `mask_image` is given, else what the
    model was trained for (vary for inpainting models, complete for raster models, which then need `keep_rows`).
    Text models take `prompt=` / `negative_prompt=` in the two other tasks too (one for all images, or a list: per
    output prompt for generation, per input image for image-to-image).
    Sampling arguments (`generator`, `temperature`, `top_k`, `top_p`, `batch_size`, `show_progress`, ...) are the
    model methods' own."""

    _load_image_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False  # text models load their PixelGPTProcessor (prompt tokenizer) themselves when needed

    def _sanitize_parameters(self, operation=None, **kwargs):
        preprocess = {"operation": operation, "mask_image": kwargs.get("mask_image")}
        if self.task == TEXT_TO_IMAGE and "prompt" in kwargs:  # pipe(prompt="...") as well as pipe("...")
            preprocess["prompt"] = kwargs.pop("prompt")
        return preprocess, kwargs, {}

    def preprocess(self, inputs, operation=None, mask_image=None, prompt=None):
        if self.task == TEXT_TO_IMAGE:
            return self._text_inputs(inputs, operation, prompt)
        if self.task == "unconditional-image-generation":
            if inputs is not None and not isinstance(inputs, int):
                raise ValueError("unconditional-image-generation takes no image: call pipe(num_images=...) or "
                                 f"pipe(<int>), got {type(inputs).__name__}.")
            return {"operation": "generate", "inputs": inputs}
        if inputs is None:
            raise ValueError("image-to-image needs input images: pipe(images, ...).")
        if operation is None:
            operation = "inpaint" if mask_image is not None else DEFAULT_OPERATION[self.model.config.task]
        if operation not in IMAGE_TO_IMAGE:
            raise ValueError(f"`operation` must be one of {IMAGE_TO_IMAGE}, got {operation!r}.")
        self.model.config.check_operation(operation)
        return {"operation": operation, "inputs": inputs}

    def _text_inputs(self, inputs, operation, prompt) -> dict:
        """text-to-image: the prompt(s), given as the input or as `prompt=` (not both), for a text model."""
        if not getattr(self.model.config, "is_text_conditional", False):
            raise ValueError("text-to-image needs a text model: this one was trained without prompts (train one with "
                             "--text_conditional); draw from it with pipeline('unconditional-image-generation').")
        if operation not in (None, "generate"):
            raise ValueError(f"text-to-image draws new images; for operation {operation!r} use "
                             "pipeline('image-to-image') with `prompt=`.")
        if inputs is not None and prompt is not None:
            raise ValueError("Give the prompt once: pipe('a red square') or pipe(prompt='a red square').")
        prompt = inputs if inputs is not None else prompt
        if isinstance(prompt, tuple):
            prompt = list(prompt)
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                            and all(isinstance(p, str) for p in prompt))):
            raise ValueError("text-to-image takes a prompt or a non-empty list of prompts: pipe('a red square', "
                             f"num_images=2) ('' draws unconditionally), got {prompt!r}.")
        self.model.config.check_operation("generate")
        return {"operation": "generate", "inputs": None, "prompt": prompt}

    def _forward(self, model_inputs, **kwargs):
        self.model.image_processor = self.image_processor or self.model.image_processor
        operation, inputs = model_inputs["operation"], model_inputs["inputs"]
        if "prompt" in model_inputs:
            kwargs["prompt"] = model_inputs["prompt"]
        if operation == "generate":
            if inputs is not None:
                kwargs["num_images"] = inputs
            return self.model.generate_images(**kwargs)
        if operation == "inpaint" and "mask_image" not in kwargs:
            raise ValueError("operation 'inpaint' needs `mask_image` (white = redraw).")
        return getattr(self.model, f"{operation}_images")(inputs, **kwargs)

    def postprocess(self, model_outputs):
        return model_outputs

    def __call__(self, inputs=None, **kwargs):
        """Run once on all inputs: the model methods batch and seed the whole call themselves (Pipeline's own
        `__call__` would split a list into separate calls)."""
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        model_inputs = self.preprocess(inputs, **preprocess_params)
        return self.postprocess(self._forward(model_inputs, **forward_params), **postprocess_params)


__all__ = ["PixelGPTPipeline"]
