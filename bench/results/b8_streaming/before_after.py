"""One-off, not part of run.py: start-up (process start to the first DataLoader iteration) and peak RSS of train.py
before this change (commit 8cd812e: every image decoded once before training) and after it (decoded as batches are
made; prepared and --streaming), on B8's generated data. Wrote before_after.json.

The old code must be checked out beside: `git worktree add /tmp/old 8cd812e`, then in /tmp/old
`ln -s ../modeling pixelgpt/modeling && ln -s ../processing pixelgpt/processing` (the editable install's package
mapping is bypassed for it).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = r"""
import time; STARTED = time.perf_counter()
import json, os, resource, sys, tempfile, torch
if os.environ.get("PIXELGPT_OLD"):  # the checkout under PYTHONPATH, not the editable install
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
first = {}
original = torch.utils.data.DataLoader.__iter__
def timed(self):
    first.setdefault("s", time.perf_counter() - STARTED)
    return original(self)
torch.utils.data.DataLoader.__iter__ = timed
from pixelgpt import training
with tempfile.TemporaryDirectory() as tmp:
    argv = ["--dataset_name", sys.argv[1], "--cache_dir", tmp + "/cache", "--output_dir", tmp + "/out",
            "--resolution", "32", "--quantization", "rgb", "--num_levels", "4", "--max_train_steps", "5",
            "--train_batch_size", "16", "--max_eval_samples", "16", "--eval_steps", "1000", "--sample_steps", "1000",
            "--num_samples", "1", "--lr_warmup_steps", "1"] + sys.argv[2:]
    training.main(training.parse_args(argv))
print(json.dumps({"startup_seconds": first["s"], "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "code": training.__file__}))
"""
RUNS = (("before", {"PIXELGPT_OLD": "1", "PYTHONPATH": "/tmp/old"}, []), ("after", {}, []),
        ("after_streaming", {}, ["--streaming"]))

results = {}
for n in (10000, 50000, 200000):
    folder = tempfile.mkdtemp(prefix="b8old-")
    data = json.dumps({"task": "stream_data", "folder": folder, "images": n})
    subprocess.run([sys.executable, str(HERE.parents[1] / "run.py"), "--worker", data], check=True, capture_output=True)
    row = {}
    for name, env, extra in RUNS:
        out = subprocess.run([sys.executable, "-c", WORKER, folder, *extra], capture_output=True, text=True,
                             env=dict(os.environ, **env), cwd="/tmp")  # not beside the repository's pixelgpt/
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        row[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(n, name, row[name], flush=True)
    results[n] = row
    shutil.rmtree(folder)
(HERE / "before_after.json").write_text(json.dumps(results, indent=2))
