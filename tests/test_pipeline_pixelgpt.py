"""`pipeline("text-to-image")` and prompts in the other two pipeline tasks (modeling/pipeline_pixelgpt.py), from a
saved text model: in a python without the package (the code saved beside the model), and the refusals in this one."""

import numpy as np
import pytest
import torch

from pixelgpt import PixelGPTForImageGeneration, PixelGPTPipeline

from conftest import make_model, run_without_pixelgpt, save_model, save_text_model


def seeded(seed=0, **kwargs):
    return dict(generator=torch.Generator().manual_seed(seed), show_progress=False, **kwargs)


def test_text_to_image_and_prompts_in_every_task_from_a_folder_without_the_package(tmp_path):
    """The saved pipeline draws what the model's own methods draw, for one prompt, a list, `prompt=`, a negative
    prompt, and in the two other tasks; its refusals are one-line ValueErrors."""
    folder = save_text_model(tmp_path / "model")
    model = PixelGPTForImageGeneration.from_pretrained(folder).eval()
    expected = {
        "one": model.generate_images(2, prompt="a red square", **seeded(1, guidance_scale=3, output_type="tokens")),
        "list": model.generate_images(2, prompt=["red square", "blue circle"], negative_prompt="green heart",
                                      **seeded(2, guidance_scale=2, output_type="tokens")),
        "task": model.generate_images(3, prompt="blue heart", **seeded(3, output_type="tokens")),
    }
    for name, tokens in expected.items():
        np.save(tmp_path / f"expected_{name}.npy", tokens.numpy())
    stdout = run_without_pixelgpt(f"""
        import numpy as np, torch
        from transformers import pipeline
        folder, data = {folder!r}, {str(tmp_path)!r}
        expected = {{name: np.load(f"{{data}}/expected_{{name}}.npy") for name in ("one", "list", "task")}}
        seeded = lambda seed, **kw: dict(generator=torch.Generator().manual_seed(seed), show_progress=False, **kw)
        paint = pipeline("text-to-image", model=folder, trust_remote_code=True)
        assert type(paint).__name__ == "PixelGPTPipeline" and "pixelgpt" not in type(paint).__module__.split(".")[0]
        images = paint("a red square", num_images=2, **seeded(1, guidance_scale=3))
        assert len(images) == 2 and all(image.size == (5, 5) and image.mode == "RGB" for image in images)
        tokens = paint("a red square", num_images=2, **seeded(1, guidance_scale=3, output_type="tokens"))
        assert np.array_equal(tokens.numpy(), expected["one"])
        keyword = paint(prompt="a red square", num_images=2, **seeded(1, guidance_scale=3, output_type="tokens"))
        assert np.array_equal(keyword.numpy(), expected["one"])
        listed = paint(["red square", "blue circle"], num_images=2, negative_prompt="green heart",
                       **seeded(2, guidance_scale=2, output_type="tokens"))
        assert np.array_equal(listed.numpy(), expected["list"])  # 2 per prompt, the first prompt's first
        assert len(paint(["red square", ""], **seeded(0))) == 2  # "" draws unconditionally
        draw = pipeline("unconditional-image-generation", model=folder, trust_remote_code=True)
        piped = draw(3, prompt="blue heart", **seeded(3, output_type="tokens"))
        assert np.array_equal(piped.numpy(), expected["task"])
        edit = pipeline("image-to-image", model=folder, trust_remote_code=True)
        kept = np.asarray(images[0])
        completed = edit(images, keep_rows=2, prompt="blue circle", negative_prompt="red", **seeded(4))
        assert len(completed) == 2 and np.array_equal(np.asarray(completed[0])[:2], kept[:2])
        refusals = {{
            "no prompt": lambda: paint(num_images=2),
            "twice": lambda: paint("red square", prompt="blue circle"),
            "not text": lambda: paint(3),
            "too long": lambda: paint(" ".join(["red square"] * 20)),
        }}
        for name, call in refusals.items():
            try:
                call()
            except ValueError as err:
                assert "\\n" not in str(err), (name, err)
                print(name, "|", err)
            else:
                raise AssertionError(name + " was not refused")
    """, env={"HF_HOME": str(tmp_path / "hf_home")})
    messages = dict(line.split(" | ", 1) for line in stdout.strip().splitlines()[-4:])
    assert messages["no prompt"].startswith("text-to-image takes a prompt or a non-empty list of prompts")
    assert messages["twice"].startswith("Give the prompt once")
    assert messages["not text"].endswith("got 3.")
    assert "at most 16" in messages["too long"] and "max_text_length" in messages["too long"]


def test_text_to_image_of_a_model_without_text_is_refused(tmp_path, gray_processor):
    """The pipeline says what is wrong; from a saved folder, transformers refuses the task before any PixelGPT code
    runs (a model without text saves no "text-to-image" pipeline), naming it."""
    from transformers import pipeline

    model = make_model(vocab_size=4, num_classes=2)
    paint = PixelGPTPipeline(model=model, image_processor=gray_processor, task="text-to-image")
    with pytest.raises(ValueError, match=r"^text-to-image needs a text model: this one was trained without prompts"):
        paint("a red square")
    draw = PixelGPTPipeline(model=model, image_processor=gray_processor,
                            task="unconditional-image-generation")
    with pytest.raises(ValueError, match="trained without text prompts"):  # the model's own refusal, passed on
        draw(num_images=1, prompt="a red square", show_progress=False)
    with pytest.raises((KeyError, ValueError), match="text-to-image"):
        pipeline("text-to-image", model=save_model(tmp_path / "model"), trust_remote_code=True)
