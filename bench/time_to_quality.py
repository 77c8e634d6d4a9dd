"""B9 time to quality: what a minute of CPU buys on each path. Class-conditional models of the built-in
Fashion-MNIST subset trained for 2, 5 and 10 minutes on pixels (`--tokenizer none`) and in two stages (`--tokenizer
train`), each judged at the end of its run by `--quality_samples` (class match at guidance 3 and the recognised share
against real images, pixelgpt.quality's classifier).

    python bench/time_to_quality.py --output_dir bench/results/b9_time_to_quality        # ~50 min on a 2-core CPU
    python bench/time_to_quality.py --minutes 0.5 --quality_samples 20 --output_dir /tmp/b9   # a smoke check

A budget in minutes of training becomes steps through the seconds per step measured first on this machine (the
difference of two short runs of each kind, so that start-up, evaluation and grids do not count); two stages give a
quarter of the minutes to the tokenizer (its default budget on this data takes about as long as a third of stage
two's). Each run's whole wall clock (`train_seconds`: start-up, encoding, evaluations and the final grid included,
the quality measurement not) is reported beside its budget. Writes report.json, report.md and time_to_quality.svg (class
match and recognised share against minutes, both paths). Runs one training at a time: never beside another one.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = HERE.parent / "examples" / "train.py"
TOKENIZER_SHARE = 0.25  # of a two-stage budget, spent on stage one
PATHS = {"pixels": ["--tokenizer", "none"], "two stages": ["--tokenizer", "train"]}
COMMON = ["--class_conditional", "--eval_steps", "100000", "--sample_steps", "100000", "--checkpointing_steps",
          "100000"]


def train(output_dir: Path, argv: list) -> dict:
    """One train.py run in its own process; its eval_results.json."""
    command = [sys.executable, str(TRAIN), "--output_dir", str(output_dir), *COMMON, *argv]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads((output_dir / "eval_results.json").read_text())


def seconds_per_step(scratch: Path, argv: list, steps=(20, 80), key="steps") -> tuple[float, float]:
    """(seconds per step, fixed seconds) of a kind of run, from two short runs without the quality measurement."""
    times = []
    for n in steps:
        folder = scratch / f"calibrate-{len(times)}"
        extra = [f"--{key}", str(n)] if key != "steps" else ["--max_train_steps", str(n)]
        times.append(train(folder, [*argv, "--quality_samples", "0", *extra])["train_seconds"])
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    per_step = max((times[1] - times[0]) / (steps[1] - steps[0]), 1e-3)
    return per_step, max(times[0] - steps[0] * per_step, 0.0)


def calibrate(scratch: Path) -> dict:
    """Seconds per step and fixed cost of pixel training, tokenizer training (stage one) and stage two."""
    pixel = seconds_per_step(scratch, PATHS["pixels"], steps=(10, 40))  # ~1.7 s a step on 2 cores
    # Stage one alone: --tokenizer train with a 1-step stage two (its cost is the fixed part of the pair).
    tokenizer = seconds_per_step(scratch, [*PATHS["two stages"], "--max_train_steps", "1"], key="tokenizer_steps")
    stage_two = seconds_per_step(scratch, [*PATHS["two stages"], "--tokenizer_steps", "20"])
    return {"pixels": pixel, "tokenizer": tokenizer, "stage two": stage_two}


def budget_steps(rates: dict, path: str, minutes: float) -> list:
    """The step flags that fill `minutes` of training (the optimizer steps' own time, measured per step; start-up,
    evaluation and the final grid come on top) on `path`."""
    seconds = minutes * 60
    if path == "pixels":
        return ["--max_train_steps", str(max(1, round(seconds / rates["pixels"][0])))]
    tokenizer_steps = max(1, round(seconds * TOKENIZER_SHARE / rates["tokenizer"][0]))
    steps = max(1, round(seconds * (1 - TOKENIZER_SHARE) / rates["stage two"][0]))
    return ["--tokenizer_steps", str(tokenizer_steps), "--max_train_steps", str(steps)]


def figures(results: dict) -> dict:
    return {"class_match_g3": results.get("sample_quality_class_match_g3"),
            "recognised_g3": results.get("sample_quality_recognised_g3"),
            "recognised_real": results.get("sample_quality_recognised_real"),
            "frechet_g3": results.get("sample_quality_frechet_g3"),
            "train_seconds": results["train_seconds"], "steps": results["steps"],
            "tokenizer_steps": results.get("tokenizer_steps")}


def svg_plot(rows: list, minutes: list) -> str:
    """Class match (solid) and recognised share (dashed) against minutes, one colour per path."""
    width, height, left, bottom, top, right = 660, 340, 60, 50, 20, 250
    span = max(minutes)

    def x(m):
        return left + (width - left - right) * m / span

    def y(v):
        return top + (height - top - bottom) * (1 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12"><rect width="100%" height="100%" fill="white"/>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0%}</text>')
    for m in minutes:
        parts.append(f'<text x="{x(m):.1f}" y="{height - bottom + 18}" text-anchor="middle">{m:g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">minutes of '
                 'training (2-core CPU)</text>')
    colours = {"pixels": "#d95f02", "two stages": "#1b9e77"}
    legend = top
    for path, colour in colours.items():
        for key, dash, label in (("class_match_g3", "", "class match"), ("recognised_g3", "6,4", "recognised")):
            points = [(x(r["minutes"]), y(r[key])) for r in rows if r["path"] == path and r[key] is not None]
            if not points:
                continue
            line = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2" '
                         f'stroke-dasharray="{dash}"/>')
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in points]
            parts.append(f'<line x1="{width - right + 10}" x2="{width - right + 34}" y1="{legend}" y2="{legend}" '
                         f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text '
                         f'x="{width - right + 40}" y="{legend + 4}">{path}: {label}</text>')
            legend += 18
    real = [r["recognised_real"] for r in rows if r["recognised_real"] is not None]
    if real:
        level = sum(real) / len(real)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(level):.1f}" y2="{y(level):.1f}" '
                     f'stroke="#555" stroke-dasharray="2,3"/><text x="{width - right + 10}" y="{legend + 4}">real '
                     f'images recognised: {level:.0%}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def markdown(report: dict) -> str:
    lines = ["| path | budget, min | steps (stage one + two) | wall, min | class match, g=3 | recognised, g=3 | "
             "Frechet distance, g=3 |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        steps = f"{r['tokenizer_steps']} + {r['steps']}" if r["tokenizer_steps"] else str(r["steps"])
        lines.append(f"| {r['path']} | {r['minutes']:g} | {steps} | {r['train_seconds'] / 60:.1f} | "
                     f"{r['class_match_g3']:.1%} | {r['recognised_g3']:.1%} | {r['frechet_g3']:.2f} |")
    ratios = [f"{m:g} min: {r:.2f}x" for m, r in report["class_match_ratio"].items() if r is not None]
    lines += ["", f"Class match, two stages / pixels: {', '.join(ratios)}. Real held-out images are recognised "
              f"{report['rows'][0]['recognised_real']:.1%} of the time.", "", f"Machine: {report['machine']}."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10], help="Training budgets.")
    p.add_argument("--quality_samples", type=int, default=200, help="Samples judged per run (guidance 3).")
    p.add_argument("--output_dir", required=True, help="Where report.json, report.md and the plot go.")
    args = p.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        rates = calibrate(scratch)
        print(f"calibration (seconds per step, fixed seconds): {rates}", flush=True)
        rows = []
        for minutes in args.minutes:
            for path, flags in PATHS.items():
                folder = scratch / f"{path.replace(' ', '_')}-{minutes:g}"
                argv = [*flags, *budget_steps(rates, path, minutes), "--quality_samples", str(args.quality_samples),
                        "--quality_guidance", "3"]
                row = dict(path=path, minutes=minutes, **figures(train(folder, argv)))
                rows.append(row)
                print(json.dumps(row), flush=True)
                subprocess.run(["rm", "-rf", str(folder)], check=True)
    ratio = {}
    for minutes in args.minutes:
        pixel, two = (next(r for r in rows if r["path"] == path and r["minutes"] == minutes) for path in PATHS)
        ratio[minutes] = two["class_match_g3"] / pixel["class_match_g3"] if pixel["class_match_g3"] else None
    report = {"machine": machine(),
              "calibration": rates, "rows": rows, "class_match_ratio": ratio}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    (out / "time_to_quality.svg").write_text(svg_plot(rows, args.minutes))
    print(markdown(report))


if __name__ == "__main__":
    main()
