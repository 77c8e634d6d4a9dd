"""bench/time_to_quality.py: minutes become step budgets through the measured throughputs, and the report and plot
show every run. The figures themselves come from the real run (bench/results/b9_time_to_quality)."""

import sys
import xml.etree.ElementTree as ET

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import time_to_quality as b9  # noqa: E402

RATES = {"pixels": (1.5, 12.0), "tokenizer": (0.15, 10.0), "stage two": (0.1, 20.0)}


def test_minutes_become_the_steps_that_fill_them():
    assert b9.budget_steps(RATES, "pixels", 2) == ["--max_train_steps", "80"]  # 120 s / 1.5 s per step
    # Two stages: a quarter of 120 s for stage one, 30 / 0.15 = 200 steps; the rest for stage two, 90 / 0.1.
    assert b9.budget_steps(RATES, "two stages", 2) == ["--tokenizer_steps", "200", "--max_train_steps", "900"]
    assert b9.budget_steps(RATES, "pixels", 0.01) == ["--max_train_steps", "1"]  # never 0 steps


def rows():
    common = dict(recognised_real=0.68, tokenizer_steps=None)
    return [dict(path="pixels", minutes=2, class_match_g3=0.2, recognised_g3=0.1, frechet_g3=9.0, train_seconds=118,
                 steps=72, **common),
            dict(path="two stages", minutes=2, class_match_g3=0.8, recognised_g3=0.7, frechet_g3=2.0,
                 train_seconds=121, steps=830, **dict(common, tokenizer_steps=133)),
            dict(path="pixels", minutes=5, class_match_g3=0.4, recognised_g3=0.3, frechet_g3=6.0, train_seconds=300,
                 steps=192, **common),
            dict(path="two stages", minutes=5, class_match_g3=0.9, recognised_g3=0.8, frechet_g3=1.0,
                 train_seconds=299, steps=2000, **dict(common, tokenizer_steps=400))]


def test_the_report_has_a_row_per_run_and_the_ratio_per_budget():
    text = b9.markdown({"rows": rows(), "class_match_ratio": {2: 4.0, 5: 2.25}, "machine": "a CPU"})
    assert "| two stages | 2 | 133 + 830 | 2.0 | 80.0% | 70.0% | 2.00 |" in text
    assert "| pixels | 5 | 192 | 5.0 | 40.0% | 30.0% | 6.00 |" in text
    assert "2 min: 4.00x, 5 min: 2.25x" in text and "68.0%" in text


def test_the_plot_is_valid_svg_with_a_line_per_path_and_figure():
    svg = ET.fromstring(b9.svg_plot(rows(), [2, 5]))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 4  # (pixels, two stages) x (class match, recognised)
    assert all(len(line.get("points").split()) == 2 for line in lines)  # one point per budget
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "two stages: class match" in texts and "real images recognised: 68%" in texts
