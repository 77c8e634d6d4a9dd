import pytest

from pixelgpt import PIXELGPT_PRESETS, PixelGPTConfig, PixelGPTForImageGeneration

from conftest import tiny_config


def test_derived_defaults():
    config = PixelGPTConfig(vocab_size=256, image_size=8, tokens_per_pixel=3, hidden_size=96, num_attention_heads=4)
    assert config.head_dim == 24
    assert config.intermediate_size == 256  # 8/3 * 96 rounded up to a multiple of 32
    assert config.num_image_tokens == 8 * 8 * 3
    assert config.max_position_embeddings == 1 + 192
    assert config.start_token_id == 256


def test_class_tokens_follow_the_start_token():
    config = tiny_config(num_classes=3)
    assert config.num_start_tokens == 4
    assert [config.class_token_id(c) for c in range(3)] == [14, 15, 16]
    with pytest.raises(ValueError, match=r"class label 3 is out of range.*3 classes"):
        config.class_token_id(3)


def test_save_load_round_trip(tmp_path):
    config = tiny_config(num_classes=2, tie_word_embeddings=True, rope_theta=50.0)
    config.save_pretrained(tmp_path)
    loaded = PixelGPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.tie_word_embeddings is True and loaded.max_position_embeddings == config.max_position_embeddings


def test_derived_fields_are_not_taken_from_a_saved_file(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    loaded = PixelGPTConfig.from_pretrained(tmp_path, image_size=7)
    assert loaded.max_position_embeddings == 1 + 49


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_size", 20, r"multiple of 4 \* num_attention_heads \(8\)"),
        ("tokens_per_pixel", 2, r"must be 1 or 3, got 2"),
        ("image_size", 0, r"\[1, 256\], got 0"),
        ("image_size", 300, r"\[1, 256\], got 300"),
        ("vocab_size", 1, r"at least 2"),
        ("vocab_size", 12.0, r"must be an int"),
        ("num_hidden_layers", 0, r">= 1"),
        ("num_classes", -1, r">= 0"),
        ("attention_dropout", 1.0, r"\[0, 1\)"),
        ("rope_theta", 1.0, r"> 1"),
        ("intermediate_size", 0, r">= 1 or None"),
        ("parallel_tokens", 0, r"\[1, 64\]"),
        ("task", "segment", r"`task` must be one of \('generate', 'inpaint'"),
        ("text_vocab_size", 1, r"0 \(no prompts\) or at least 2, got 1"),
        ("max_text_length", 0, r"`max_text_length` must be in \[1, 256\], got 0"),
        ("text_vocab_size", 2.5, r"`text_vocab_size` must be an int"),
    ],
)
def test_impossible_values_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


@pytest.mark.parametrize("name", sorted(PIXELGPT_PRESETS))
def test_presets_are_valid(name):
    config = PixelGPTConfig(**PIXELGPT_PRESETS[name])
    assert config.hidden_size % (4 * config.num_attention_heads) == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(task="colorize"), r"task 'colorize' needs `condition_size` in \[1, 256\], got 0"),
        (dict(task="upscale", condition_size=8), r"needs `condition_vocab_size` >= 2"),
        (dict(task="inpaint", condition_size=8), r"take[s]? 0 for both"),
        (dict(task="inpaint", parallel_tokens=4), r"needs task 'generate'"),
        (dict(task="upscale", condition_size=2, condition_vocab_size=8, condition_prefix=False),
         r"needs `condition_prefix` or `aligned_condition`"),
        (dict(aligned_condition=True), r"`aligned_condition` is for the conditional tasks"),
        (dict(task="colorize", condition_size=12, condition_vocab_size=256, condition_patch_size=5),
         r"`condition_patch_size` must be an int >= 1 that divides `condition_size` \(12\), got 5"),
        (dict(task="colorize", condition_size=12, condition_vocab_size=256, condition_patch_size=0),
         r"`condition_patch_size` must be an int >= 1"),
        (dict(condition_patch_size=2), r"`condition_patch_size` is for the conditional tasks"),
        (dict(class_embedding=True), r"`class_embedding` needs a class-conditional model"),
        (dict(task="inpaint", inpaint_fill_order="spiral"),
         r"`inpaint_fill_order` must be one of \('random', 'raster', 'raster_both'\)"),
        (dict(num_classes=2, class_embedding="yes"), r"`class_embedding` must be True or False"),
    ],
)
def test_task_fields_are_checked_together(fields, message):
    with pytest.raises(ValueError, match=message):
        PixelGPTConfig(**fields)


def test_conditional_sequences_are_longer_by_the_condition_grid():
    config = PixelGPTConfig(image_size=8, task="upscale", condition_size=2, condition_vocab_size=256)
    assert config.is_conditional and config.num_condition_tokens == 4
    assert config.max_position_embeddings == 4 + 1 + 64
    aligned_only = PixelGPTConfig(image_size=8, task="upscale", condition_size=2, condition_vocab_size=256,
                                  aligned_condition=True, condition_prefix=False)
    assert aligned_only.num_prefix_tokens == 0 and aligned_only.max_position_embeddings == 1 + 64
    cells = PixelGPTConfig(image_size=8, task="colorize", condition_size=32, condition_vocab_size=256,
                           condition_patch_size=4)  # a 4x4 cell per token: 64 condition rows for 1,024 pixels
    assert (cells.num_condition_tokens, cells.condition_grid_size, cells.num_condition_rows) == (1024, 8, 64)
    assert cells.num_prefix_tokens == 64 and cells.max_position_embeddings == 64 + 1 + 64


def test_from_pretrained_overrides_are_checked_like_constructor_arguments(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"multiple of 4 \* num_attention_heads"):
        PixelGPTConfig.from_pretrained(tmp_path, hidden_size=20)
    with pytest.raises(ValueError, match=r"`image_size` must be in \[1, 256\], got 0"):
        PixelGPTForImageGeneration.from_pretrained(tmp_path, image_size=0)  # the model's path to the config
    assert PixelGPTConfig.from_pretrained(tmp_path, image_size=7).image_size == 7


def test_a_field_broken_after_construction_is_refused_at_save(tmp_path):
    config = tiny_config()
    config.task = "segment"
    with pytest.raises(ValueError, match=r"`task` must be one of"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_check_operation_names_the_training_flag():
    config = tiny_config(task="inpaint")
    assert config.operations == ("generate", "complete", "inpaint", "outpaint", "vary")
    config.check_operation("vary")
    with pytest.raises(ValueError, match=r"`upscale` needs a model trained for 'upscale'.*train --task upscale"):
        config.check_operation("upscale")
    with pytest.raises(ValueError, match=r"Unknown operation 'sharpen'"):
        config.check_operation("sharpen")


def test_a_text_model_reads_its_prompt_first():
    config = PixelGPTConfig(image_size=8, text_vocab_size=50, max_text_length=6)
    assert config.is_text_conditional and config.num_text_tokens == 6 and config.num_prefix_tokens == 6
    assert config.max_position_embeddings == 6 + 1 + 64
    both = PixelGPTConfig(image_size=8, task="upscale", condition_size=2, condition_vocab_size=256, text_vocab_size=50,
                          max_text_length=6)
    assert both.num_prefix_tokens == 6 + 4
    assert not PixelGPTConfig().is_text_conditional and PixelGPTConfig().num_text_tokens == 0
    with pytest.raises(ValueError, match=r"`text_pad_token_id` must be in \[0, 50\), got 50"):
        PixelGPTConfig(text_vocab_size=50, text_pad_token_id=50)
