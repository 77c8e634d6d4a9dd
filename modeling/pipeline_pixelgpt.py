"""`pipeline()` support: one pipeline class, saved beside every PixelGPT model, for two tasks.

    from transformers import pipeline
    draw = pipeline("unconditional-image-generation", model="user/pixelgpt-fashion", trust_remote_code=True)
    images = draw(num_images=4, generator=torch.Generator().manual_seed(0))
    edit = pipeline("image-to-image", model="user/pixelgpt-fashion-inpaint", trust_remote_code=True)
    filled = edit(image, mask_image=mask)

The pipeline is a thin front for the model's methods (`generate_images`, `inpaint_images`, ...): every keyword
argument is passed on, and the result is a list of PIL images. Which model does what is the config's `OPERATIONS`
table. This file travels to the Hub with the model, so it imports only its siblings.
"""

from transformers import Pipeline

from .configuration_pixelgpt import DEFAULT_OPERATION, OPERATIONS

IMAGE_TO_IMAGE = tuple(op for op in OPERATIONS if op != "generate")


class PixelGPTPipeline(Pipeline):
    """`unconditional-image-generation`: `pipe(num_images=1, class_labels=None, **sampling)`.
    `image-to-image`: `pipe(images, operation=None, **arguments)` with `operation` one of complete, inpaint,
    outpaint, vary, colorize, upscale, translate; by default inpaint when `mask_image` is given, else what the
    model was trained for (vary for inpainting models, complete for raster models, which then need `keep_rows`).
    Sampling arguments (`generator`, `temperature`, `top_k`, `top_p`, `batch_size`, `show_progress`, ...) are the
    model methods' own."""

    _load_image_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False

    def _sanitize_parameters(self, operation=None, **kwargs):
        return {"operation": operation, "mask_image": kwargs.get("mask_image")}, kwargs, {}

    def preprocess(self, inputs, operation=None, mask_image=None):
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

    def _forward(self, model_inputs, **kwargs):
        self.model.image_processor = self.image_processor or self.model.image_processor
        operation, inputs = model_inputs["operation"], model_inputs["inputs"]
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
