"""PixelGPT's processor for text models: the image processor and the prompt tokenizer in one object, as transformers'
multimodal processors pair theirs. `processor(text=[...], images=[...])` returns what the model reads: `input_ids`
(the image processor's) and `text_ids` (each prompt padded to the model's `max_text_length`).

The tokenizer is a `tokenizers` WordPiece model trained on the training captions (lower case, accents stripped, split
at spaces and punctuation) and saved as `tokenizer.json`. A word it never saw is spelled with the word pieces it knows
(`"teal"` may become `"te", "##al"`); only a character it never saw becomes `[UNK]`. The empty prompt is all padding:
the unconditional prompt that classifier-free guidance steers away from.
"""

import numpy as np
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class PixelGPTProcessor(ProcessorMixin):
    r"""
    Image processor and prompt tokenizer of a PixelGPT text model.

    Args:
        image_processor (`PixelGPTImageProcessor`): turns images into image tokens and back.
        tokenizer (`PreTrainedTokenizerFast`): the prompt tokenizer; its `model_max_length` is the model's
            `max_text_length` and its padding token the model's `text_pad_token_id`.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def max_text_length(self) -> int:
        """Prompt tokens the model reads; longer prompts are refused (`encode_prompts`)."""
        return int(self.tokenizer.model_max_length)

    def __call__(self, images=None, text=None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """`images` -> `input_ids` (as the image processor returns them), `text` (a prompt or a list) -> `text_ids`
        `(B, max_text_length)`; at least one of the two."""
        if images is None and text is None:
            raise ValueError("Give `images`, `text` (prompts), or both.")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=None, **kwargs))
        if text is not None:
            data["text_ids"] = self.encode_prompts(text)
        return BatchFeature(data, tensor_type=return_tensors)

    def encode_prompts(self, prompts) -> np.ndarray:
        """Prompts (a string or a list of strings) -> `(B, max_text_length)` int64 token ids, padded. A prompt longer
        than `max_text_length` tokens is refused, naming the limit (a cut prompt would silently lose words)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"A prompt must be a string or a non-empty list of strings, got {prompts!r}.")
        limit, pad = self.max_text_length, self.tokenizer.pad_token_id
        ids = np.full((len(prompts), limit), pad, dtype=np.int64)
        for i, prompt in enumerate(prompts):
            tokens = self.tokenizer.backend_tokenizer.encode(prompt, add_special_tokens=False).ids
            if len(tokens) > limit:
                raise ValueError(f"Prompt {prompt!r} is {len(tokens)} tokens long; this model reads at most {limit} "
                                 f"(max_text_length). Shorten it.")
            ids[i, : len(tokens)] = tokens
        return ids

    def decode_prompts(self, text_ids) -> list[str]:
        """`(B, max_text_length)` prompt ids -> the prompts as the model read them (normalised, padding dropped)."""
        return self.tokenizer.batch_decode(np.asarray(text_ids).tolist(), skip_special_tokens=True)

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of `prompt` the model never saw whole in its captions (it reads them as word pieces)."""
        vocab = self.tokenizer.get_vocab()
        words = self.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
            self.tokenizer.backend_tokenizer.normalizer.normalize_str(prompt))
        return [word for word, _ in words if word not in vocab]


# save_pretrained writes `auto_map` and copies this file (and the image processor's), so AutoProcessor loads it
# with trust_remote_code=True.
PixelGPTProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["PixelGPTProcessor"]
