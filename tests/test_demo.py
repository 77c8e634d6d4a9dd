"""The web demo (pixelgpt/demo.py, `pixelgpt demo`): its command line and imports, then the real page in headless
Chromium on two tiny saved models (class-conditional generate, inpaint): generate, inpaint with a mask drawn with
the mouse, and errors shown in the page.

The browser tests need gradio and playwright (the `test` extra) and Debian's Chromium (`apt-get install chromium`;
playwright's own browser download is not used); they are skipped, with that reason, where one is missing.
"""

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from pixelgpt import PixelGPTImageProcessor, cli, demo
from pixelgpt.cli import build_parser

from conftest import save_model, save_tokenizer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_cli_parses_demo_flags():
    args = build_parser().parse_args(["demo", "--model", "a", "--model", "b/c", "--port", "7000", "--share"])
    assert (args.command, args.model, args.host, args.port, args.share) == ("demo", ["a", "b/c"], "127.0.0.1", 7000,
                                                                            True)
    args = build_parser().parse_args(["demo", "--model", "a", "--host", "0.0.0.0"])
    assert (args.model, args.host, args.port, args.share, args.device) == (["a"], "0.0.0.0", None, False, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo"])  # --model is required


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent)


def test_the_library_never_imports_gradio():
    result = run_python("import sys, pixelgpt, pixelgpt.cli, pixelgpt.demo; print('gradio' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_without_gradio_the_error_names_the_extra(tmp_path):
    folder = save_model(tmp_path / "model")
    # A None entry in sys.modules makes `import gradio` raise ImportError, as where it is not installed.
    with mock.patch.dict(sys.modules, {"gradio": None}):
        with pytest.raises(ImportError, match=re.escape(demo.GRADIO_MISSING)):
            demo.build_demo([folder])
        with mock.patch.object(sys, "argv", ["pixelgpt", "demo", "--model", folder]), \
                pytest.raises(SystemExit) as exit_info:
            cli.run()
    assert exit_info.value.code == "pixelgpt: " + demo.GRADIO_MISSING  # one line, before any model loads


def test_a_model_that_cannot_load_is_a_value_error_not_an_exit(tmp_path):
    """In a notebook or a Space, build_demo raises what was wrong; the process goes on."""
    pytest.importorskip("gradio", reason=demo.GRADIO_MISSING)
    with pytest.raises(ValueError, match="no such folder"):
        demo.build_demo([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="holds an image tokenizer"):
        demo.build_demo([save_tokenizer(tmp_path / "tokenizer")])


# ------------------------------------------------------------------------------------------------ in the browser
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo of a class-conditional generate model (m0) and an inpaint model (m1), served on 127.0.0.1."""
    pytest.importorskip("gradio", reason=demo.GRADIO_MISSING)
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (the test extra)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")

    root = tmp_path_factory.mktemp("demo")
    models = [save_model(root / "generate", num_classes=2), save_model(root / "inpaint", task="inpaint")]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # tests never reach the network
        app = demo.launch(models, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            yield browser, app.local_url, models
            browser.close()
        app.close()


@pytest.fixture
def page(served):
    browser, url, _ = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(url)
    yield page
    page.close()


def results(page, key: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(displayed gallery images, downloadable PNG files) of tab `key` once `count` of each are in the page."""
    page.locator(f"#{key}-gallery img").nth(count - 1).wait_for()
    page.locator(f"#{key}-files a").nth(count - 1).wait_for()

    def fetch(selector, attribute):
        urls = page.eval_on_selector_all(selector, f"els => els.map(e => e.{attribute})")
        return [np.asarray(Image.open(io.BytesIO(page.request.get(url).body()))) for url in urls]

    return fetch(f"#{key}-gallery img", "src"), fetch(f"#{key}-files a", "href")


def test_generate_shows_enlarged_images_and_offers_the_model_size_pngs(page):
    page.click("#m0-generate-run")  # default settings: class 0, 8 images
    shown, files = results(page, "m0-generate", 8)
    assert len(shown) == len(files) == 8
    natural = page.eval_on_selector_all("#m0-generate-gallery img", "els => els.map(e => [e.naturalWidth, "
                                        "e.naturalHeight])")
    assert natural == [[258, 258]] * 8  # 6 pixels, 43 times: at least 256 on screen
    for small, large in zip(files, shown):
        assert small.shape == (6, 6)
        assert np.array_equal(large, small.repeat(43, 0).repeat(43, 1))  # whole pixels, no smoothing
    assert len({small.tobytes() for small in files}) > 1  # eight samples, not one image repeated


def test_inpaint_redraws_only_the_pixels_painted_with_the_mouse(page, served, tmp_path):
    original = np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8)
    upload = tmp_path / "input.png"
    Image.fromarray(original).resize((48, 48), Image.NEAREST).save(upload)  # 8 screen pixels per model pixel
    page.get_by_role("tab", name=served[2][1]).click()
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    editor = page.locator("#m1-inpaint-input")
    editor.get_by_text("Upload an image").wait_for()  # the editor is drawn, ready for a file
    editor.locator("input[type=file]").set_input_files(upload)
    editor.get_by_text("Upload an image").wait_for(state="hidden")  # the upload is on the canvas
    box = editor.locator("canvas").first.bounding_box()  # the upload is shown centred in the canvas
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # A short horizontal stroke through the centre: the pointer moves in small steps, as a hand would, so the
    # editor records a stroke and not a jump.
    page.mouse.move(x - 20, y)
    page.mouse.down()
    page.mouse.move(x + 20, y, steps=10)
    page.mouse.up()
    page.click("#m1-inpaint-run")
    shown, files = results(page, "m1-inpaint", 4)
    expected = PixelGPTImageProcessor.from_pretrained(served[2][1]).to_array(Image.open(upload))[0, ..., 0]
    for small, large in zip(files, shown):
        assert small.shape == (6, 6) and large.shape == (258, 258)
        changed = np.argwhere(small != expected)
        assert len(changed), "nothing was redrawn: the painted mask did not reach the model"
        assert changed.min() >= 1 and changed.max() <= 4, changed  # only around the centre, where the stroke was


def test_errors_are_messages_in_the_page(page):
    page.click("#m0-generate-class input")
    page.get_by_role("option", name="none (unconditional)").click()
    page.fill("#m0-generate-guidance input[type=number]", "2")
    page.press("#m0-generate-guidance input[type=number]", "Enter")
    page.click("#m0-generate-run")
    # The library's ValueError, word for word, as the page's error message.
    page.get_by_text("`guidance_scale` guides towards class labels").wait_for()
    assert page.locator("#m0-generate-files a").count() == 0
    page.get_by_role("tab", name="Complete", exact=True).click()
    page.click("#m0-complete-run")
    page.get_by_text("Upload an input image first.").wait_for()
