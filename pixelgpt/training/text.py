"""Prompts in training (`--text_conditional`): the prompt tokenizer trained on the run's captions, and the captions
of a batch as the model reads them."""

import itertools
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..processing.processing_pixelgpt import PixelGPTProcessor

logger = logging.getLogger(__name__)  # also used outside an accelerate run

PAD, UNK = "[PAD]", "[UNK]"
# The prompt length a model reads: the longest training caption's, but at least MIN_TEXT_LENGTH (users write longer
# prompts than short captions) and at most MAX_TEXT_LENGTH (a longer caption is cut in training, and counted in the
# log; the processor refuses prompts longer than the model's `max_text_length` at sampling time).
MIN_TEXT_LENGTH, MAX_TEXT_LENGTH = 16, 32
# Captions read to train the tokenizer (a stream is read this far once).
TOKENIZER_CAPTIONS = 100_000


def train_prompt_tokenizer(captions, vocab_size: int) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer of at most `vocab_size` entries trained on `captions` (an iterable of strings): lower
    case, accents stripped, split at spaces and punctuation; `[PAD]` is id 0 and `[UNK]` id 1. WordPiece rather than
    a word list: a word never seen in a caption is still read, as the pieces it shares with seen ones."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator((str(c) for c in captions), trainer=trainer)
    # The trainer numbers pieces of equal count in hash order, which differs between runs: number them in sorted
    # order, so that the same captions always give the same ids.
    pieces = sorted(set(tokenizer.get_vocab()) - {PAD, UNK})
    tokenizer.model = models.WordPiece({t: i for i, t in enumerate([PAD, UNK] + pieces)}, unk_token=UNK)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK)


def build_text_processor(image_processor, captions, vocab_size: int) -> PixelGPTProcessor:
    """The run's `PixelGPTProcessor`: `image_processor` and a prompt tokenizer trained on `captions` (a list), whose
    `model_max_length` is the longest caption's length in tokens, within [MIN_TEXT_LENGTH, MAX_TEXT_LENGTH]."""
    captions = [str(c or "") for c in itertools.islice(captions, TOKENIZER_CAPTIONS)]
    if not any(c.strip() for c in captions):
        raise ValueError("--text_conditional: every caption is empty; the caption column must hold text.")
    tokenizer = train_prompt_tokenizer(captions, vocab_size)
    lengths = [len(ids) for ids in token_ids(tokenizer, captions)]
    tokenizer.model_max_length = max(MIN_TEXT_LENGTH, min(max(lengths), MAX_TEXT_LENGTH))
    cut = sum(n > MAX_TEXT_LENGTH for n in lengths)
    if cut:
        logger.warning(f"{cut} of {len(captions)} captions are longer than {MAX_TEXT_LENGTH} tokens: the model reads "
                       "their first words only")
    return PixelGPTProcessor(image_processor=image_processor, tokenizer=tokenizer)


def captioned_processor(image_processor, train, data, vocab_size: int, accelerator, folder: Path,
                        resuming: bool) -> PixelGPTProcessor:
    """The run's processor, its prompt tokenizer trained on the captions of `train` (`data.caption_column`; a stream
    is read for its first TOKENIZER_CAPTIONS captions) by the main process and saved in `folder`, from which every
    process loads it: all read prompts alike, and a resumed run (`resuming`) reads them as its checkpoints did."""
    folder = Path(folder)
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (resuming and (folder / "tokenizer.json").is_file()):
            train_captions(image_processor, train, data, vocab_size).tokenizer.save_pretrained(folder)
        return PixelGPTProcessor(image_processor=image_processor,
                                 tokenizer=PreTrainedTokenizerFast.from_pretrained(folder))


def train_captions(image_processor, train, data, vocab_size: int) -> PixelGPTProcessor:
    """`build_text_processor` on the captions of `train`, refused with the columns named when it has none."""
    column = data.caption_column
    names = train.column_names or list(next(iter(train), {}))
    if column not in names:
        raise ValueError(f"--text_conditional reads captions from --caption_column {column!r}, which the data lacks; "
                         f"columns are {names}. An image folder takes its captions from a metadata.jsonl beside the "
                         "images (a file_name and a text field per line).")
    captions = (row[column] for row in train.select_columns([column]))
    return build_text_processor(image_processor, captions, vocab_size)


def token_ids(tokenizer, texts) -> list[list[int]]:
    """The token ids of each text, whatever its length (the fast tokenizer's own call warns past its maximum)."""
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch([str(t or "") for t in texts],
                                                                     add_special_tokens=False)]


def caption_ids(processor: PixelGPTProcessor, captions) -> list[list[int]]:
    """`(B, max_text_length)` ids of a batch's captions (None reads as the empty caption), cut to the model's length
    where longer."""
    limit, pad = processor.max_text_length, processor.tokenizer.pad_token_id
    return [r[:limit] + [pad] * (limit - len(r[:limit])) for r in token_ids(processor.tokenizer, captions)]


def drop_words(text_ids: torch.LongTensor, prompt_dropout: float, word_dropout: float, pad: int) -> torch.LongTensor:
    """Training prompts `(B, L)`: a `prompt_dropout` share becomes the empty prompt (what guidance steers from), and
    each other token is left out with chance `word_dropout`, the rest moved up in order. A model that also sees "purple"
    and "square" apart learns what each word draws on its own, which is what composing "purple square" (never seen
    together) needs; one that sees only whole captions can learn each caption as one name. Draws from torch's RNG."""
    words = text_ids != pad
    keep = words & (torch.rand(text_ids.shape, device=text_ids.device) >= word_dropout)
    keep &= (torch.rand(text_ids.shape[0], 1, device=text_ids.device) >= prompt_dropout)
    order = torch.sort((~keep).int(), dim=1, stable=True).indices  # kept tokens first, in their order
    return text_ids.gather(1, order).masked_fill(~keep.gather(1, order), pad)
