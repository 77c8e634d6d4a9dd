"""A saved PixelGPT folder must load where the package is absent: from a folder and from a Hub cache, offline,
through trust_remote_code — with the same logits and the same processor output as the original."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi

from pixelgpt import PixelGPTForImageClassification, PixelGPTForImageGeneration, PixelGPTImageProcessor

from conftest import random_ids, run_without_pixelgpt, tiny_config

# Every file a saved model needs in a python without the package: saved beside the weights, importing only siblings.
# transformers saves a class's file and, recursively, the files it imports relatively (the siblings).
CODE_FILES = {"configuration_pixelgpt.py", "modeling_pixelgpt.py", "linear_pixelgpt.py", "cache_pixelgpt.py",
              "sampling_pixelgpt.py", "tasks_pixelgpt.py", "layouts_pixelgpt.py", "pipeline_pixelgpt.py",
              "image_processing_pixelgpt.py", "configuration_pixelgpt_vqvae.py", "modeling_pixelgpt_vqvae.py",
              "rotary_pixelgpt.py"}
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixelgpt-model")
    torch.manual_seed(0)
    model = PixelGPTForImageGeneration(tiny_config(vocab_size=27, num_classes=2, class_embedding=True)).eval()
    processor = PixelGPTImageProcessor(quantization="rgb", num_levels=3, image_size=5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    np.save(folder.parent / "image.npy", image)
    ids = random_ids(model.config, batch=2)
    np.save(folder.parent / "ids.npy", ids.numpy())
    expected = {
        "logits": model(ids).logits.detach().numpy(),
        "processed": processor(image).input_ids.numpy(),
        "tokens": model.generate_images(2, generator=torch.Generator().manual_seed(0), image_processor=processor,
                                        output_type="tokens", show_progress=False).numpy(),
    }
    return folder, expected


LOAD_AND_DUMP = """
    import json, sys, numpy as np, torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM,
                              AutoModelForImageClassification)
    source, data = sys.argv[1] if len(sys.argv) > 1 else {source!r}, {data!r}
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=True)
    assert type(model).__name__ == "PixelGPTForImageGeneration", type(model)
    assert "pixelgpt" not in type(model).__module__.split(".")[0]  # came from the downloaded code, not a package
    assert type(model.lm_head).__module__ == type(model).__module__.rsplit(".", 1)[0] + ".linear_pixelgpt"
    causal_lm = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True)
    assert type(causal_lm).__name__ == "PixelGPTForImageGeneration"
    classifier = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True, num_labels=3)
    assert type(classifier).__name__ == "PixelGPTForImageClassification"
    ids = torch.from_numpy(np.load(data + "/ids.npy"))
    np.save(data + "/out_logits.npy", model(ids).logits.detach().numpy())
    np.save(data + "/out_processed.npy", processor(np.load(data + "/image.npy")).input_ids.numpy())
    tokens = model.generate_images(2, generator=torch.Generator().manual_seed(0), output_type="tokens",
                                   show_progress=False)
    np.save(data + "/out_tokens.npy", tokens.numpy())
    images = model.generate_images(2, generator=torch.Generator().manual_seed(0), show_progress=False)
    from transformers import pipeline
    draw = pipeline("unconditional-image-generation", model=source, trust_remote_code=True)
    piped = draw(2, generator=torch.Generator().manual_seed(0), output_type="tokens", show_progress=False)
    assert torch.equal(piped, tokens) and type(draw).__name__ == "PixelGPTPipeline"
    # Sampling ran on the saved cache file (the static cache), beside the saved network and linear layer.
    saved = {{name.rsplit(".", 1)[-1] for name in sys.modules if name.startswith("transformers_modules.")}}
    assert {{"cache_pixelgpt", "linear_pixelgpt", "sampling_pixelgpt"}} <= saved, saved
    names = {{"config": type(config).__name__, "processor": type(processor).__name__}}
    print(json.dumps({{**names, "size": images[0].size}}))
"""


def check_outputs(folder, expected, stdout):
    data = folder.parent
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report == {"config": "PixelGPTConfig", "processor": "PixelGPTImageProcessor", "size": [5, 5]}
    np.testing.assert_array_equal(np.load(data / "out_logits.npy"), expected["logits"])
    np.testing.assert_array_equal(np.load(data / "out_processed.npy"), expected["processed"])
    np.testing.assert_array_equal(np.load(data / "out_tokens.npy"), expected["tokens"])


def test_saved_folder_holds_weights_code_and_auto_map(saved):
    folder, _ = saved
    names = {p.name for p in folder.iterdir()}
    assert CODE_FILES | {"config.json", "preprocessor_config.json", "model.safetensors"} <= names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pkl"))}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_pixelgpt.PixelGPTForImageGeneration"
    assert auto_map["AutoConfig"] == "configuration_pixelgpt.PixelGPTConfig"
    assert auto_map["AutoModelForImageClassification"] == "modeling_pixelgpt.PixelGPTForImageClassification"
    processor_map = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoImageProcessor": "image_processing_pixelgpt.PixelGPTImageProcessor"}


def test_fresh_process_without_the_package_loads_a_folder(saved):
    folder, expected = saved
    stdout = run_without_pixelgpt(LOAD_AND_DUMP.format(source=str(folder), data=str(folder.parent)),
                                  env={"HF_HOME": str(folder.parent / "hf_home_folder")})
    check_outputs(folder, expected, stdout)


def hub_cache(folder, hf_home, repo_id: str) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repo: a snapshot and refs/main."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def test_fresh_process_without_the_package_loads_from_a_hub_cache_offline(saved, tmp_path):
    folder, expected = saved
    hub_cache(folder, tmp_path / "hf_home", "someone/tiny-pixelgpt")
    stdout = run_without_pixelgpt(LOAD_AND_DUMP.format(source="someone/tiny-pixelgpt", data=str(folder.parent)),
                                  env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"})
    check_outputs(folder, expected, stdout)


def test_push_to_hub_uploads_weights_config_processor_and_code(saved, tmp_path):
    folder, _ = saved
    model = PixelGPTForImageGeneration.from_pretrained(folder)
    processor = PixelGPTImageProcessor.from_pretrained(folder)
    uploaded = []

    def fake_commit(self, repo_id, operations, **kwargs):
        uploaded.extend(op.path_in_repo for op in operations)
        return mock.MagicMock(oid=REVISION, commit_url=f"https://hub.invalid/{repo_id}/commit/{REVISION}")

    with mock.patch.object(HfApi, "create_repo", return_value=mock.MagicMock(repo_id="someone/tiny")), \
            mock.patch.object(HfApi, "create_commit", fake_commit):
        model.push_to_hub("someone/tiny", token="hf_fake")
        processor.push_to_hub("someone/tiny", token="hf_fake")
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} | CODE_FILES <= set(uploaded)
    assert not [name for name in uploaded if name.endswith((".bin", ".pt", ".pkl"))]


def test_image_to_image_pipeline_from_a_folder_matches_the_model(tmp_path):
    torch.manual_seed(0)
    model = PixelGPTForImageGeneration(tiny_config(vocab_size=256, task="inpaint")).eval()
    processor = PixelGPTImageProcessor(quantization="gray8", image_size=5)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    image = np.random.default_rng(0).integers(0, 256, (5, 5), dtype=np.uint8)
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:3] = True
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "mask.npy", mask)
    expected = model.inpaint_images(image, mask, num_samples=2, image_processor=processor, output_type="tokens",
                                    generator=torch.Generator().manual_seed(1), show_progress=False)
    run_without_pixelgpt(f"""
        import numpy as np, torch
        from transformers import pipeline
        edit = pipeline("image-to-image", model={str(tmp_path / "model")!r}, trust_remote_code=True)
        image, mask = np.load({str(tmp_path / "image.npy")!r}), np.load({str(tmp_path / "mask.npy")!r})
        tokens = edit(image, mask_image=mask, num_samples=2, output_type="tokens",
                      generator=torch.Generator().manual_seed(1), show_progress=False)
        np.save({str(tmp_path / "piped.npy")!r}, tokens.numpy())
        varied = edit([image, image], strength=0.4, show_progress=False)  # no mask: variations
        assert len(varied) == 2 and varied[0].size == (5, 5)
        try:
            edit(image, operation="upscale")
        except ValueError as err:
            assert "--task upscale" in str(err), err
        else:
            raise AssertionError("an inpainting model must refuse to upscale")
    """, env={"HF_HOME": str(tmp_path / "hf_home")})
    np.testing.assert_array_equal(np.load(tmp_path / "piped.npy"), expected.numpy())


def test_a_saved_classifier_loads_through_remote_code_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    classifier = PixelGPTForImageClassification(tiny_config(vocab_size=27, num_labels=3)).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    assert CODE_FILES - {"image_processing_pixelgpt.py"} <= {p.name for p in (tmp_path / "classifier").iterdir()}
    ids = random_ids(classifier.config, batch=2)
    np.save(tmp_path / "ids.npy", ids.numpy())
    run_without_pixelgpt(f"""
        import numpy as np, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "classifier")!r},
                                                                trust_remote_code=True).eval()
        assert type(model).__name__ == "PixelGPTForImageClassification"
        ids = torch.from_numpy(np.load({str(tmp_path / "ids.npy")!r}))
        np.save({str(tmp_path / "logits.npy")!r}, model(ids).logits.detach().numpy())
    """, env={"HF_HOME": str(tmp_path / "hf_home")})
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), classifier(ids).logits.detach().numpy())


# ------------------------------------------------------------------ a model on a tokenizer's grid (issue 15)
TOKENIZER_MODEL_DUMP = """
    import json, sys, numpy as np, torch
    from transformers import AutoModel
    source, data = {source!r}, {data!r}
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    assert type(model.image_tokenizer).__name__ == "PixelGPTVQVAE"
    assert "pixelgpt" not in type(model).__module__.split(".")[0]
    image = np.load(data + "/image.npy")
    mask = np.load(data + "/mask.npy")
    images = model.inpaint_images(image, mask, num_samples=2, generator=torch.Generator().manual_seed(3),
                                  show_progress=False)
    np.save(data + "/out_inpainted.npy", np.stack([np.asarray(i) for i in images]))
    tokenizer = AutoModel.from_pretrained(data + "/tokenizer", trust_remote_code=True).eval()
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    np.save(data + "/out_ids.npy", tokenizer.encode(pixels).numpy())
    print(json.dumps({{"tokenizer": type(tokenizer).__name__, "size": images[0].size}}))
"""


@pytest.fixture(scope="module")
def saved_tokenizer_model(tmp_path_factory):
    """A tiny inpainting PixelGPT carrying a tiny tokenizer, its processor, and the tokenizer saved on its own."""
    from pixelgpt import PixelGPTVQVAE, PixelGPTVQVAEConfig

    root = tmp_path_factory.mktemp("pixelgpt-tokens")
    torch.manual_seed(0)
    tokenizer = PixelGPTVQVAE(PixelGPTVQVAEConfig(image_size=8, base_channels=8, downsample_factor=2,
                                                          fsq_levels=[3, 3])).eval()
    model = PixelGPTForImageGeneration(tiny_config(vocab_size=9, image_size=4, task="inpaint",
                                                   tokenizer_config=tokenizer.config)).eval()
    model.image_tokenizer.load_state_dict(tokenizer.state_dict())
    processor = PixelGPTImageProcessor(quantization="rgb8", image_size=8)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "tokenizer")
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 3:7] = True
    np.save(root / "image.npy", image)
    np.save(root / "mask.npy", mask)
    model.image_processor = processor
    expected = {
        "inpainted": np.stack([np.asarray(i) for i in model.inpaint_images(
            image, mask, num_samples=2, generator=torch.Generator().manual_seed(3), show_progress=False)]),
        "ids": tokenizer.encode(PixelGPTVQVAE.to_pixel_values(torch.from_numpy(image)[None])).numpy(),
    }
    assert (expected["inpainted"][:, ~mask] == image[~mask]).all()
    return root, expected


def check_tokenizer_outputs(root, expected, stdout):
    assert json.loads(stdout.strip().splitlines()[-1]) == {"tokenizer": "PixelGPTVQVAE", "size": [8, 8]}
    np.testing.assert_array_equal(np.load(root / "out_inpainted.npy"), expected["inpainted"])
    np.testing.assert_array_equal(np.load(root / "out_ids.npy"), expected["ids"])


def test_a_model_with_its_tokenizer_loads_from_a_folder_without_the_package(saved_tokenizer_model):
    root, expected = saved_tokenizer_model
    assert CODE_FILES <= {p.name for p in (root / "model").iterdir()}
    stdout = run_without_pixelgpt(TOKENIZER_MODEL_DUMP.format(source=str(root / "model"), data=str(root)),
                                  env={"HF_HOME": str(root / "hf_home_folder")})
    check_tokenizer_outputs(root, expected, stdout)


def test_a_model_with_its_tokenizer_loads_from_a_hub_cache_offline(saved_tokenizer_model, tmp_path):
    root, expected = saved_tokenizer_model
    hub_cache(root / "model", tmp_path / "hf_home", "someone/tiny-pixelgpt-tokens")
    stdout = run_without_pixelgpt(TOKENIZER_MODEL_DUMP.format(source="someone/tiny-pixelgpt-tokens", data=str(root)),
                                  env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"})
    check_tokenizer_outputs(root, expected, stdout)
