"""Benchmark VAE training: time per batch / projected time per epoch and peak memory, per preset.

The workload is the paper's: 5,672 averages (synthetic here: random positive
images of the preset's input size with random orientations; the cost does not
depend on the content).  Each preset is timed over ``--batches`` training steps
(forward, Ewald slicing, backward, Adam) after one warm-up step, in its own
subprocess so that peak memory is per preset (CPU: max RSS; CUDA:
``torch.cuda.max_memory_allocated``).  An epoch is ``ceil(5672 / batch)`` steps;
the projected whole training multiplies by ``--epochs``.

    python benchmarks/bench_vae.py --out bench_vae.json                       # CPU, all presets
    python benchmarks/bench_vae.py --device cuda --presets intermediate --batches 20 --out gpu.json

Paper (appendix B.3): 5,672 averages at 161^3 in under 2 h on 4 V100.  Target:
the whole 161^3 training in under 1 h on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

PAPER_AVERAGES = 5672


def measure(preset: str, device: str, batch: int, batches: int, amp: bool, threads: int) -> dict:
    import numpy as np
    import torch

    from spicompute.geometry import grid_q
    from spicompute.slicing import random_quaternions, rotation_matrices
    from spicompute.vae.model import VAE, architecture
    from spicompute.vae.train import TrainConfig, batch_loss

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    arch = architecture(preset, 1)
    n = arch.input_size
    rng = np.random.default_rng(0)
    m = batch * (batches + 1)
    quats = random_quaternions(m, rng)

    class Data:  # the fields batch_loss reads, as TensorData holds them
        image = torch.rand(m, 2, n, n, device=dev)
        target = torch.rand(m, n * n, device=dev) + 0.1
        observed = torch.ones(m, n * n, dtype=torch.bool, device=dev)
        condition = torch.rand(m, 5, device=dev)
        rotations = torch.from_numpy(rotation_matrices(quats).astype(np.float32)).to(dev)
        count_scale = torch.full((m,), 100.0, device=dev)
        q_lab = torch.from_numpy(grid_q(n, 1.0 / (n // 2), 0.2).reshape(-1, 3).astype(np.float32)).to(dev)
        dq3 = 1.0 / (arch.volume_size // 2)
        floor = 0.1

    model = VAE(arch).to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = TrainConfig(amp=amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")

    def step(k):
        idx = torch.arange(k * batch, (k + 1) * batch, device=dev)
        noise = torch.randn(batch, 1, device=dev)
        optim.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
            loss, _, _ = batch_loss(model, Data, idx, noise, config, 0.01)
        scaler.scale(loss / batch).backward()
        scaler.step(optim)
        scaler.update()

    step(0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for k in range(1, batches + 1):
        step(k)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    per_batch = (time.perf_counter() - t) / batches
    steps = math.ceil(PAPER_AVERAGES / batch)
    row = {"preset": preset, "device": device, "volume": arch.volume_size, "input": n, "batch": batch,
           "amp": amp, "seconds_per_batch": round(per_batch, 4),
           "projected_seconds_per_epoch": round(per_batch * steps, 1),
           "parameters": sum(p.numel() for p in model.parameters()),
           "cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        row["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["demo", "low", "intermediate", "high"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch size per preset (default: 16 demo, 8 low, 4 intermediate, 2 high on CPU; 16 on CUDA)")
    ap.add_argument("--batches", type=int, default=3, help="timed training steps per preset")
    ap.add_argument("--epochs", type=int, default=60, help="epochs for the projected whole training")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    default_batch = {"demo": 16, "low": 8, "intermediate": 4, "high": 2} if args.device == "cpu" else {}
    if args.one:  # child process: one preset
        preset, batch = args.one.split(":")
        row = measure(preset, args.device, int(batch), args.batches, args.amp, args.threads)
        with open(args.out, "w") as fh:
            json.dump(row, fh)
        return 0
    rows = []
    for i, preset in enumerate(args.presets):
        batch = args.batch[i] if args.batch else default_batch.get(preset, 16)
        child = f"{args.out}.{preset}.json"
        cmd = [sys.executable, __file__, "--one", f"{preset}:{batch}", "--device", args.device,
               "--batches", str(args.batches), "--threads", str(args.threads), "--out", child]
        if args.amp:
            cmd.append("--amp")
        code = subprocess.call(cmd)
        if code:
            rows.append({"preset": preset, "device": args.device, "error": f"exit {code} (out of memory?)"})
            continue
        with open(child) as fh:
            row = json.load(fh)
        row["projected_hours_whole_training"] = round(row["projected_seconds_per_epoch"] * args.epochs / 3600, 2)
        rows.append(row)
        import os

        os.unlink(child)
    keys = ["preset", "device", "volume", "batch", "seconds_per_batch", "projected_seconds_per_epoch",
            "projected_hours_whole_training", "cpu_max_rss_mb", "gpu_peak_mb"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in keys))
    with open(args.out, "w") as fh:
        json.dump({"averages": PAPER_AVERAGES, "epochs": args.epochs, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
