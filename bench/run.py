"""PixelGPT vs transformers' ImageGPT, same machine, same run: one command, a table, a JSON and a Markdown report.

    python bench/run.py                 # full suite (~26 min on a 2-core CPU)
    python bench/run.py --quick         # smaller sizes and budgets, for a smoke check
    python bench/run.py --only B1,B2    # some rows only
    python bench/run.py --device cuda   # on a GPU: bf16 training, CUDA memory

Every row runs PixelGPT and `ImageGPTForCausalImageModeling` at the same depth, width, heads, vocabulary and
sequence length (PixelGPT's SwiGLU width 8/3*D matches ImageGPT's 4*D GELU MLP in parameters and FLOPs). Each
measurement runs in a fresh worker process (so peak RSS is that measurement's own), alternating the two models, and
the best of the repeats is kept. Ratios are PixelGPT / ImageGPT for speed, ImageGPT / PixelGPT for memory and
bits/dim (so > 1 always means PixelGPT is better).

B1 training throughput (tokens/s) and achieved GFLOP/s against this machine's measured matmul peak.
B2 generation images/s and ms per token, KV cache, batches 1/8/64 at 16x16 and 32x32; PixelGPT also with parallel
   decoding (8 tokens per forward pass, 8x fewer passes), and the kernel floor of one-token sampling (the step's
   matmuls and attention alone), which bounds what any one-token loop at this size could gain over ImageGPT; and
   PixelGPT through torch.compile (compiled in the untimed warm-up run; the first call's time is noted).
B3 peak memory (RSS; CUDA max allocated on GPU) in training and generation.
B4 scaling: training time and memory per image at 8x8 .. 64x64.
B6 exact speculative sampling on a trained k-ahead model (--exact_model): images/s, forward passes per image and
   tokens per pass against one token per pass, approximate k-ahead decoding and ImageGPT at the same size; one token
   and exact also through torch.compile. Mean images/s over the same seeds (exact sampling's time varies with its
   draws), where the other rows keep the best repeat.
B5 quality per compute: both trained by the same loop for the same wall-clock on Fashion-MNIST (../shared/data),
   held-out bits/dim (lossless 8-bit gray tokens).
B7 64x64 colour images/s, training (batch 2) and sampling (batch 8), tiny size: PixelGPT on an image tokenizer's
   16x16 grid (1,000 codes, factor 4; sampling includes decoding to pixels) against PixelGPT and ImageGPT on 4,096
   palette tokens (256 colours), the same transformer. Ratios: tokenizer model / pixel model, and against ImageGPT.
B8 data at scale: train.py on 10k, 50k and 200k generated 32x32 images (parquet shards written to a temporary folder,
   deleted after): peak RSS and start-up time (process start to the first training batch) with --streaming and
   with the prepared (memory-mapped Arrow) dataset. Not a model comparison: ImageGPT has no data pipeline, so the
   reference column is the prepared dataset and the ratios are prepared / streaming.
"""

import argparse
import gzip
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

STARTED = time.perf_counter()  # a worker's start, for B8's start-up time
HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "fashion-mnist"
SIZES = {"full": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8),
         "quick": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4)}
TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4)


# ----------------------------------------------------------------------------------------------------- models
def build(kind, size, image_size, vocab, device, parallel_tokens=1):
    torch.manual_seed(0)
    seq = image_size * image_size
    if kind in ("pixelgpt", "pixelgpt_tokens"):
        from pixelgpt import PixelGPTConfig, PixelGPTForImageGeneration, PixelGPTImageProcessor

        tokenizer = None
        if kind == "pixelgpt_tokens":  # the emoji recipe's tokenizer: factor 4, 1,000 codes (speed needs no training)
            tokenizer = dict(image_size=4 * image_size, downsample_factor=4, fsq_levels=[8, 5, 5, 5])
            vocab = 1000
        config = PixelGPTConfig(vocab_size=vocab, image_size=image_size, parallel_tokens=parallel_tokens,
                                tokenizer_config=tokenizer, **size)
        model = PixelGPTForImageGeneration(config)
        if tokenizer:
            model.image_processor = PixelGPTImageProcessor(quantization="rgb8", image_size=config.pixel_size)
    else:
        from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

        # ImageGPT's vocabulary includes its start-of-sequence token; n_positions covers start + all pixels.
        config = ImageGPTConfig(vocab_size=vocab + 1, n_positions=seq + 1, n_embd=size["hidden_size"],
                                n_layer=size["num_hidden_layers"], n_head=size["num_attention_heads"])
        model = ImageGPTForCausalImageModeling(config)
    return model.to(device)


def batch_ids(batch, image_size, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, 1 + image_size * image_size), generator=g)
    ids[:, 0] = vocab  # both models use id `vocab` as the start token
    return ids.to(device)


def loss_of(kind, model, ids):
    if kind.startswith("pixelgpt"):
        return model(input_ids=ids, labels=ids, use_cache=False).loss
    return model(input_ids=ids, labels=ids).loss


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------------------------------- workers
def work_train(p):
    device, kind = p["device"], p["kind"]
    model = build(kind, p["size"], p["image_size"], p["vocab"], device).train()
    optimizer = torch.optim.AdamW([x for x in model.parameters() if x.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size if kind == "pixelgpt_tokens" else p["vocab"]
    ids = batch_ids(p["batch"], p["image_size"], vocab, device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    times = []
    for step in range(p["warmup"] + p["steps"]):
        sync(device)
        t = time.perf_counter()
        with autocast:
            loss = loss_of(kind, model, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= p["warmup"]:
            times.append(time.perf_counter() - t)
    seconds = min(times)
    tokens = p["batch"] * p["image_size"] ** 2
    return {"seconds_per_step": seconds, "tokens_per_s": tokens / seconds, "images_per_s": p["batch"] / seconds,
            "peak_mb": peak_memory_mb(device), "params": sum(x.numel() for x in model.parameters())}


@torch.no_grad()
def work_generate(p):
    """Images/s of one model: an untimed warm-up run first (both libraries are slower on their first call in a
    process; ImageGPT's generate() much more so), then the best of `repeats` timed runs. PixelGPT samples one token
    per pass, k per pass approximately (`tokens_per_step`), or exactly (`exact`: speculative, passes counted).
    `model_path` loads a trained model instead of a random one (speculative acceptance depends on the weights)."""
    device, kind = p["device"], p["kind"]
    k, exact = p.get("tokens_per_step", 1), p.get("exact", False)
    if p.get("model_path") and kind == "pixelgpt":
        from pixelgpt import PixelGPTForImageGeneration

        model = PixelGPTForImageGeneration.from_pretrained(p["model_path"]).to(device).eval()
    else:
        model = build(kind, p["size"], p["image_size"], p["vocab"], device, parallel_tokens=k).eval()
    if device == "cuda":
        model = model.to(torch.bfloat16)
    n = p["image_size"] ** 2
    passes = []
    forward = model.forward
    if p.get("compile"):  # PixelGPT's forward through torch.compile; the untimed warm-up run compiles it
        forward = torch.compile(forward, dynamic=True)

    def counted(*args, **kwargs):
        passes[-1] += 1
        return forward(*args, **kwargs)

    model.forward = counted
    times = []
    for run in range(p.get("warmup", 1) + p["repeats"]):
        torch.manual_seed(run)
        passes.append(0)
        sync(device)
        t = time.perf_counter()
        if kind == "pixelgpt_tokens":  # images decoded through the tokenizer: the time includes it
            out = model.generate_images(p["batch"], batch_size=p["batch"], show_progress=False)
            assert len(out) == p["batch"] and out[0].size == (4 * p["image_size"],) * 2
        elif kind == "pixelgpt":
            out = model.generate_images(p["batch"], batch_size=p["batch"], tokens_per_step=k, exact=exact,
                                        output_type="tokens", show_progress=False)
        else:
            start = torch.full((p["batch"], 1), p["vocab"], device=device)
            out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0,
                                 max_new_tokens=n, pad_token_id=p["vocab"])
        sync(device)
        times.append(time.perf_counter() - t)
        assert kind == "pixelgpt_tokens" or out.shape == (p["batch"], 1 + n), out.shape
    warmup = p.get("warmup", 1)
    seconds = min(times[warmup:])
    forward_passes = sum(passes[warmup:]) / len(passes[warmup:])
    mean_seconds = sum(times[warmup:]) / len(times[warmup:])
    return {"seconds": seconds, "first_call_seconds": times[0], "images_per_s": p["batch"] / seconds,
            "mean_seconds": mean_seconds, "mean_images_per_s": p["batch"] / mean_seconds,
            "ms_per_token": 1000 * seconds / n, "forward_passes": forward_passes,
            "tokens_per_pass": n / forward_passes, "peak_mb": peak_memory_mb(device)}


@torch.no_grad()
def work_floor(p):
    """Lower bound for one-token-per-step sampling with this machine's kernels: a PixelGPT-sized step reduced to its
    unavoidable work (the four projections of each layer, attention over the filled cache, the output head), with
    no norms, rotary, residuals, sampling or Python beyond one loop. Any implementation at this size and precision
    streams these weights and this cache once per token, so ImageGPT's ms/token divided by this is the largest
    speed-up that a better one-token loop could reach."""
    from pixelgpt.modeling.sampling_pixelgpt import packed_weights

    device = p["device"]
    model = build("pixelgpt", p["size"], p["image_size"], p["vocab"], device).eval()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = model.to(dtype)
    config, batch, n = model.config, p["batch"], p["image_size"] ** 2
    heads, head_dim, width = config.num_attention_heads, config.head_dim, config.hidden_size
    # The model's own linear modules, so the matmuls use its kernels (oneDNN with packed weights on CPU).
    layers = [(layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
              for layer in model.model.layers]
    cache = [torch.zeros(2, batch, heads, n, head_dim, device=device, dtype=dtype) for _ in layers]
    x = torch.randn(batch, width, device=device, dtype=dtype)
    with packed_weights(model):
        sync(device)
        begin = time.perf_counter()
        for t in range(n):
            for (qkv, out, gate_up, down), kv in zip(layers, cache):
                q, k, v = qkv(x).view(batch, 3, heads, 1, head_dim).unbind(1)
                kv[0, :, :, t : t + 1], kv[1, :, :, t : t + 1] = k, v
                attended = F.scaled_dot_product_attention(q, kv[0, :, :, : t + 1], kv[1, :, :, : t + 1])
                x = out(attended.view(batch, width))  # (B, D)
                x = down(gate_up(x)[:, : config.intermediate_size])
            model.lm_head(x)
        sync(device)
        seconds = time.perf_counter() - begin
    return {"seconds": seconds, "images_per_s": batch / seconds, "ms_per_token": 1000 * seconds / n}


def work_peak(p):
    """Matmul peak of this machine (GFLOP/s): bf16 on CUDA; fp32 on CPU, the faster of PyTorch's default sgemm
    (MKL) and oneDNN, which PixelGPT's linear layers use (MKL can run well below an AMD chip's peak)."""
    device = p["device"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = p.get("n") or (8192 if device == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    kernels = {"torch.mm": lambda: a @ b}
    if device == "cpu":
        from pixelgpt.modeling.linear_pixelgpt import ONEDNN, onednn_matmul

        if ONEDNN:
            kernels["oneDNN"] = lambda: onednn_matmul(a, b)
    by_kernel = {}
    for name, matmul in kernels.items():
        best = float("inf")
        for _ in range(5):
            sync(device)
            t = time.perf_counter()
            for _ in range(4):
                matmul()
            sync(device)
            best = min(best, (time.perf_counter() - t) / 4)
        by_kernel[name] = 2 * n**3 / best / 1e9
    return {"gflops": max(by_kernel.values()), "by_kernel": by_kernel}


def load_fashion_mnist(split, limit):
    prefix = "train" if split == "train" else "t10k"
    raw = gzip.open(SHARED / f"{prefix}-images-idx3-ubyte.gz").read()
    images = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=16).view(-1, 28 * 28)[:limit]
    return images.long()  # gray8 tokens: the pixel values themselves


def work_quality(p):
    """Train for a fixed wall-clock budget with one loop for both models; held-out bits/dim."""
    device, kind = p["device"], p["kind"]
    model = build(kind, p["size"], 28, 256, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.95), weight_decay=0.01)
    train = load_fashion_mnist("train", 60000)
    test = load_fashion_mnist("test", p["eval_images"])
    start = torch.full((1, 1), 256, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    steps, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < p["seconds"]:
        idx = torch.randint(0, len(train), (p["batch"],), generator=g)
        ids = torch.cat([start.expand(p["batch"], 1), train[idx]], 1).to(device)
        lr_scale = min(1.0, (steps + 1) / 50)  # same short warm-up for both
        for group in optimizer.param_groups:
            group["lr"] = p["lr"] * lr_scale
        loss = loss_of(kind, model, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    model.eval()
    total = 0.0
    with torch.no_grad():
        for chunk in test.split(50):
            ids = torch.cat([start.expand(len(chunk), 1), chunk], 1).to(device)
            total += loss_of(kind, model, ids).item() * chunk.numel()
    return {"bits_per_dim": total / test.numel() / math.log(2), "steps": steps,
            "images_seen": steps * p["batch"], "seconds": p["seconds"]}


def work_stream_data(p):
    """Write `images` random 32x32 PNGs (4x4 blocks of colour with a little noise: ~1.9 kB each, like small real
    images) as 20 parquet shards under `folder` (20: a stream can give each process and worker whole files)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng, folder = np.random.default_rng(0), Path(p["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    shards = 20
    for shard in range(shards):
        rows = []
        for _ in range(p["images"] // shards):
            pixels = rng.integers(0, 256, (4, 4, 3)).repeat(8, 0).repeat(8, 1) + rng.integers(-6, 7, (32, 32, 3))
            buffer = __import__("io").BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
            rows.append({"bytes": buffer.getvalue(), "path": None})
        table = pa.table({"image": rows, "label": rng.integers(0, 10, len(rows))})
        # The datasets feature metadata makes `image` an Image column, as a pushed dataset's parquet has it.
        table = table.replace_schema_metadata({"huggingface": json.dumps(
            {"info": {"features": {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}}})})
        pq.write_table(table, folder / f"train-{shard:05d}-of-{shards:05d}.parquet")
    return {"bytes": sum(f.stat().st_size for f in folder.iterdir())}


def work_stream_train(p):
    """A few training steps of the tiny preset on `folder` (a datasets path), fresh caches: seconds from the
    worker's start to the first training batch, and the process's peak RSS."""
    import tempfile

    from pixelgpt import training
    from pixelgpt.training.batches import TrainingBatches

    first = {}
    original = TrainingBatches.__iter__

    def timed(self):
        for batch in original(self):
            first.setdefault("seconds", time.perf_counter() - STARTED)
            yield batch

    TrainingBatches.__iter__ = timed  # put back below: the tests call this worker in their own process
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--dataset_name", p["folder"], "--cache_dir", str(Path(tmp, "cache")), "--output_dir",
                str(Path(tmp, "out")), "--resolution", str(p.get("resolution", 32)), "--quantization", "rgb",
                "--num_levels", "4", "--max_train_steps", str(p.get("steps", 5)), "--train_batch_size", "16",
                "--max_eval_samples", "16",
                "--eval_steps", "1000", "--sample_steps", "1000", "--num_samples", "1", "--lr_warmup_steps", "1"]
        try:
            training.main(training.parse_args(argv + (["--streaming"] if p["streaming"] else [])))
        finally:
            TrainingBatches.__iter__ = original
    return {"startup_seconds": first["seconds"], "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


WORKERS = {"train": work_train, "generate": work_generate, "floor": work_floor, "peak": work_peak,
           "quality": work_quality, "stream_data": work_stream_data, "stream_train": work_stream_train}


def run_worker(task, **params):
    """One measurement in a fresh interpreter (own peak RSS, no cross-talk between models)."""
    payload = json.dumps({"task": task, **params})
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", payload], capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"worker {task} {params} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternate(task, rounds, **params):
    """Run PixelGPT and ImageGPT alternately, `rounds` times each; keep each model's best run."""
    best = {}
    for _ in range(rounds):
        for kind in ("pixelgpt", "imagegpt"):
            result = run_worker(task, kind=kind, **params)
            key = "seconds_per_step" if task == "train" else "seconds"
            if kind not in best or result[key] < best[kind][key]:
                best[kind] = result
    return best


# ----------------------------------------------------------------------------------------------------- suite
def suite(args):
    quick = args.quick
    size = SIZES["quick" if quick else "full"]
    device = args.device
    vocab = 512
    rows, report = [], {"machine": machine(device), "size": size, "vocab": vocab, "quick": quick, "rows": {}}
    only = set(args.only.split(",")) if args.only else {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"}
    peaks = run_worker("peak", device=device)
    peak = peaks["gflops"]
    report["matmul_peak_gflops"], report["matmul_gflops_by_kernel"] = peak, peaks["by_kernel"]
    by_kernel = ", ".join(f"{name} {value:.0f}" for name, value in peaks["by_kernel"].items())
    print(f"measured matmul peak: {peak:.1f} GFLOP/s ({'bf16' if device == 'cuda' else 'fp32'}; {by_kernel})")

    def add(row, metric, ours, ref, ratio, unit=""):
        rows.append((row, metric, ours, ref, ratio, unit))
        print(f"{row:<34} {metric:<22} {ours:>12.4g} {ref:>12.4g} {ratio:>7.2f}x {unit}")

    print(f"{'row':<34} {'metric':<22} {'PixelGPT':>12} {'ImageGPT':>12} {'ratio':>8}")
    train_params = dict(device=device, size=size, vocab=vocab, image_size=16 if quick else 32,
                        batch=8, warmup=1, steps=2 if quick else 3)
    if only & {"B1", "B3"}:
        best = alternate("train", 1 if quick else 2, **train_params)
        report["rows"]["B1_train"] = best
        t = train_params["image_size"] ** 2
        d, layers = size["hidden_size"], size["num_hidden_layers"]
        for kind in best:
            non_embedding = 12 * layers * d * d  # attention 4D^2 + MLP 8D^2 per layer, both models
            flops_per_token = 6 * non_embedding + 6 * layers * d * t  # + causal attention matmuls, fwd + bwd
            best[kind]["gflops"] = best[kind]["tokens_per_s"] * flops_per_token / 1e9
            best[kind]["fraction_of_peak"] = best[kind]["gflops"] / peak
        ours, ref = best["pixelgpt"], best["imagegpt"]
        name = f"B1 train {train_params['image_size']}x{train_params['image_size']} b{train_params['batch']}"
        add(name, "tokens/s", ours["tokens_per_s"], ref["tokens_per_s"], ours["tokens_per_s"] / ref["tokens_per_s"])
        add(name, "fraction of peak", ours["fraction_of_peak"], ref["fraction_of_peak"],
            ours["fraction_of_peak"] / ref["fraction_of_peak"])
        add("B3 train peak memory", "MB", ours["peak_mb"], ref["peak_mb"], ref["peak_mb"] / ours["peak_mb"])

    if only & {"B2", "B3"}:
        report["rows"]["B2_generate"] = {}
        for image_size in (16, 32):
            for batch in (1, 8, 64):
                if quick and (image_size, batch) not in ((16, 1), (16, 8)):
                    continue
                params = dict(device=device, size=size, vocab=vocab, image_size=image_size, batch=batch,
                              repeats=1 if batch == 64 or image_size == 32 else 2)
                best = alternate("generate", 1, **params)
                best["pixelgpt_parallel8"] = run_worker("generate", kind="pixelgpt", tokens_per_step=8, **params)
                best["pixelgpt_compiled"] = run_worker("generate", kind="pixelgpt", compile=True, **params)
                report["rows"]["B2_generate"][f"{image_size}x{image_size}_b{batch}"] = best
                ours, ref, par = best["pixelgpt"], best["imagegpt"], best["pixelgpt_parallel8"]
                name = f"B2 generate {image_size}x{image_size} b{batch}"
                add(name, "images/s", ours["images_per_s"], ref["images_per_s"],
                    ours["images_per_s"] / ref["images_per_s"])
                add(name, "ms/token", ours["ms_per_token"], ref["ms_per_token"],
                    ref["ms_per_token"] / ours["ms_per_token"])
                compiled = best["pixelgpt_compiled"]
                add(name + " compiled", "images/s", compiled["images_per_s"], ref["images_per_s"],
                    compiled["images_per_s"] / ref["images_per_s"],
                    f"(torch.compile; first call {compiled['first_call_seconds']:.0f} s)")
                add(name + " parallel k=8", "images/s", par["images_per_s"], ref["images_per_s"],
                    par["images_per_s"] / ref["images_per_s"], f"({par['forward_passes']} passes)")
                floor = min((run_worker("floor", **params) for _ in range(2)), key=lambda r: r["seconds"])
                best["floor"] = floor
                add(name + " kernel floor", "ms/token", floor["ms_per_token"], ref["ms_per_token"],
                    ref["ms_per_token"] / floor["ms_per_token"], "(best possible one-token advantage)")
                if batch == 8:
                    add(f"B3 generate peak memory {image_size}x{image_size} b8", "MB", ours["peak_mb"],
                        ref["peak_mb"], ref["peak_mb"] / ours["peak_mb"])

    if "B6" in only and args.exact_model:
        # Exact speculative sampling needs trained weights (acceptance is how far the k-ahead drafts agree with
        # the one-token predictions); ImageGPT's speed does not depend on its weights.
        from pixelgpt import PixelGPTConfig

        trained = PixelGPTConfig.from_pretrained(args.exact_model)
        k, image_size = trained.parallel_tokens, trained.image_size
        trained_size = {name: getattr(trained, name) for name in ("hidden_size", "num_hidden_layers",
                                                                   "num_attention_heads")}
        report["rows"]["B6_exact"] = {"model": str(args.exact_model), "k": k}
        # Exact sampling's time depends on its draws (how many drafts each pass keeps), so B6 reports every
        # model's mean over the same seeds, not its luckiest run.
        for batch in (1, 8, 64):
            params = dict(device=device, size=trained_size, vocab=trained.vocab_size, image_size=image_size,
                          batch=batch, repeats=2 if batch == 64 else 4, model_path=str(args.exact_model))
            best = alternate("generate", 1, **params)
            best["exact"] = run_worker("generate", kind="pixelgpt", tokens_per_step=k, exact=True, **params)
            best["approximate"] = run_worker("generate", kind="pixelgpt", tokens_per_step=k, **params)
            best["one_compiled"] = run_worker("generate", kind="pixelgpt", compile=True, **params)
            best["exact_compiled"] = run_worker("generate", kind="pixelgpt", tokens_per_step=k, exact=True,
                                                compile=True, **params)
            report["rows"]["B6_exact"][f"b{batch}"] = best
            ref, one, exact, approx = best["imagegpt"], best["pixelgpt"], best["exact"], best["approximate"]
            name = f"B6 trained k={k} {image_size}x{image_size} b{batch}"
            speed = "mean_images_per_s"
            for label, row in (("one token", one), ("one token compiled", best["one_compiled"])):
                add(f"{name} {label}", "images/s", row[speed], ref[speed], row[speed] / ref[speed],
                    f"({row['forward_passes']:.0f} passes)")
            for label, row in (("exact", exact), ("exact compiled", best["exact_compiled"])):
                add(f"{name} {label}", "images/s", row[speed], ref[speed], row[speed] / ref[speed],
                    f"({row['forward_passes']:.0f} passes, {row['tokens_per_pass']:.2f} tokens/pass, "
                    f"{one['forward_passes'] / row['forward_passes']:.2f}x fewer than one token)")
            add(name + " approximate", "images/s", approx[speed], ref[speed], approx[speed] / ref[speed],
                f"({approx['forward_passes']:.0f} passes)")

    if "B7" in only:  # 64x64 colour: tokenizer grid against pixels, the same tiny transformer
        report["rows"]["B7_tokenizer"] = {}
        # Training batch 2: ImageGPT's eager attention over 4,097 positions needs ~2 GB per layer and image.
        pixel = dict(device=device, size=TINY, vocab=256, image_size=64, batch=2)
        tokens = dict(pixel, image_size=16, vocab=1000)
        train = {"pixelgpt_tokens": run_worker("train", kind="pixelgpt_tokens", warmup=1, steps=3, **tokens)}
        train |= alternate("train", 1, warmup=1, steps=1 if quick else 2, **pixel)
        pixel["batch"] = tokens["batch"] = 8
        generate = {"pixelgpt_tokens": run_worker("generate", kind="pixelgpt_tokens", repeats=2, **tokens)}
        generate |= alternate("generate", 1, repeats=1, **pixel)
        report["rows"]["B7_tokenizer"] = {"train": train, "generate": generate}
        for what, table, key in (("train b2", train, "images_per_s"), ("generate b8", generate, "images_per_s")):
            ours, pixels, ref = table["pixelgpt_tokens"], table["pixelgpt"], table["imagegpt"]
            add(f"B7 {what} 64x64 tokens vs pixels", "images/s", ours[key], pixels[key], ours[key] / pixels[key],
                "(reference column: PixelGPT on 4,096 pixel tokens)")
            add(f"B7 {what} 64x64 tokens vs ImageGPT", "images/s", ours[key], ref[key], ours[key] / ref[key],
                "(ImageGPT on 4,096 pixel tokens)")

    if "B4" in only:
        report["rows"]["B4_scaling"] = {}
        for image_size in (8, 16, 32) if quick else (8, 16, 32, 64):
            params = dict(device=device, size=TINY, vocab=vocab, image_size=image_size, batch=1, warmup=1, steps=2)
            best = alternate("train", 1, **params)
            report["rows"]["B4_scaling"][f"{image_size}x{image_size}"] = best
            ours, ref = best["pixelgpt"], best["imagegpt"]
            name = f"B4 train/image {image_size}x{image_size} (tiny)"
            add(name, "s/image", ours["seconds_per_step"], ref["seconds_per_step"],
                ref["seconds_per_step"] / ours["seconds_per_step"])
            add(name, "peak MB", ours["peak_mb"], ref["peak_mb"], ref["peak_mb"] / ours["peak_mb"])

    if "B5" in only:
        if not (SHARED / "train-images-idx3-ubyte.gz").exists():
            print(f"B5 skipped: {SHARED} not found (needs the shared Fashion-MNIST files)")
        else:
            params = dict(device=device, size=TINY, batch=32, lr=1e-3, eval_images=500 if quick else 1000,
                          seconds=30 if quick else args.b5_seconds)
            best = {kind: run_worker("quality", kind=kind, **params) for kind in ("pixelgpt", "imagegpt")}
            report["rows"]["B5_quality"] = best
            ours, ref = best["pixelgpt"], best["imagegpt"]
            name = f"B5 {params['seconds']}s training (tiny)"
            add(name, "held-out bits/dim", ours["bits_per_dim"], ref["bits_per_dim"],
                ref["bits_per_dim"] / ours["bits_per_dim"])
            add(name, "images seen", ours["images_seen"], ref["images_seen"],
                ours["images_seen"] / ref["images_seen"])

    if "B8" in only:  # data at scale: streaming against the prepared dataset
        import shutil
        import tempfile

        report["rows"]["B8_streaming"] = {}
        for images in (2000, 10000) if quick else (10000, 50000, 200000):
            folder = Path(tempfile.mkdtemp(prefix="pixelgpt-b8-"))
            try:
                data_bytes = run_worker("stream_data", folder=str(folder), images=images)["bytes"]
                best = {}
                for streaming in (True, False):
                    best[streaming] = run_worker("stream_train", folder=str(folder), streaming=streaming)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            ours, ref = best[True], best[False]
            report["rows"]["B8_streaming"][images] = {"streaming": ours, "prepared": ref, "data_bytes": data_bytes}
            name = f"B8 {images // 1000}k images ({data_bytes / 1e6:.0f} MB)"
            note = "(reference column: the prepared dataset, not ImageGPT)"
            add(name, "start-up s", ours["startup_seconds"], ref["startup_seconds"],
                ref["startup_seconds"] / ours["startup_seconds"], note)
            add(name, "peak MB", ours["peak_mb"], ref["peak_mb"], ref["peak_mb"] / ours["peak_mb"], note)

    report["table"] = [dict(zip(("row", "metric", "pixelgpt", "imagegpt", "ratio", "note"), r)) for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# PixelGPT vs ImageGPT ({report['machine']})", "",
             f"Model: {size} (B4, B5: {TINY}), vocabulary {vocab}; matmul peak {peak:.1f} GFLOP/s "
             f"({by_kernel}).", "",
             "| row | metric | PixelGPT | ImageGPT | PixelGPT advantage | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.4g} | {r[3]:.4g} | {r[4]:.2f}x | {r[5]} |" for r in rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


def machine(device):
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Small sizes and budgets (a smoke check, minutes).")
    parser.add_argument("--only", help="Comma-separated rows to run, e.g. B1,B2 (default: all).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where to run.")
    parser.add_argument("--b5_seconds", type=int, default=180, help="Training budget per model in B5.")
    parser.add_argument("--exact_model", help="B6: a trained k-ahead model folder (train.py --parallel_tokens k) for "
                        "exact speculative sampling; B6 is skipped without it.")
    parser.add_argument("--out", default=str(HERE / "results"), help="Folder for report.json and report.md.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        params = json.loads(args.worker)
        print(json.dumps(WORKERS[params.pop("task")](params)))
        return
    suite(args)


if __name__ == "__main__":
    main()
