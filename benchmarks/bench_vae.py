"""Benchmark the VAE per preset: time per training batch / projected epoch, and peak memory of a
training step and of encode + decode.

The workload is the paper's: 5,672 averages (synthetic here: random positive
images of the preset's input size with random orientations; the cost does not
depend on the content).  Each preset is timed over ``--batches`` training steps
(forward, Ewald slicing, backward, Adam) after one warm-up step, in its own
subprocess so that peak memory is per preset (CPU: max RSS; CUDA:
``torch.cuda.max_memory_allocated``).  An epoch is ``ceil(5672 / batch)`` steps;
the projected whole training multiplies by ``--epochs``.  A second subprocess per
preset encodes ``--encode`` averages and decodes 12 line points with the batch that
``spicompute.vae.train.volume_batch`` picks for the device (CPU: a 2 GiB budget;
CUDA: half the free memory) and reports its peak memory and the decoder's
estimated memory per volume.

    python benchmarks/bench_vae.py --out bench_vae.json                       # CPU, all presets
    python benchmarks/bench_vae.py --device cuda --presets intermediate --batches 20 --out gpu.json
    python benchmarks/bench_vae.py --presets demo low --batches 2 --encode 64 --out mem.json   # memory

Paper (appendix B.3): 5,672 averages at 161^3 in under 2 h on 4 V100.  Target:
the whole 161^3 training in under 1 h on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

PAPER_AVERAGES = 5672


def _fake_data(arch, m: int, dev):
    """Model inputs of m random averages with the fields the training and encoding read (TensorData's)."""
    import numpy as np
    import torch

    from spicompute.geometry import grid_q
    from spicompute.orient.quaternions import random_quaternions, rotation_matrices

    n, size = arch.input_size, arch.volume_size
    quats = random_quaternions(m, np.random.default_rng(0))

    class Data:
        image = torch.rand(m, 2, n, n, device=dev)
        target = torch.rand(m, n * n, device=dev) + 0.1
        observed = torch.ones(m, n * n, dtype=torch.bool, device=dev)
        condition = torch.rand(m, 5, device=dev)
        rotations = torch.from_numpy(rotation_matrices(quats).astype(np.float32)).to(dev)
        count_scale = torch.full((m,), 100.0, device=dev)
        q_lab = torch.from_numpy(grid_q(n, 1.0 / (n // 2), 0.2).reshape(-1, 3).astype(np.float32)).to(dev)
        profile = torch.ones(n * n, device=dev)
        profile3 = torch.ones(size, size, size, device=dev)
        dq3 = 1.0 / (size // 2)
        floor = 0.1

        def __len__(self):
            return m

    return Data()


def _memory(row: dict, dev) -> dict:
    import torch

    row["cpu_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if dev.type == "cuda":
        row["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name()
    return row


def measure(preset: str, device: str, batch: int, batches: int, amp: bool, threads: int) -> dict:
    import torch

    from spicompute.vae.model import VAE, architecture
    from spicompute.vae.train import TrainConfig, batch_loss, decoder_bytes_per_volume

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    arch = architecture(preset, 1)
    data = _fake_data(arch, batch * (batches + 1), dev)
    model = VAE(arch).to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = TrainConfig(amp=amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")

    def step(k):
        idx = torch.arange(k * batch, (k + 1) * batch, device=dev)
        noise = torch.randn(batch, 1, device=dev)
        optim.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
            loss, _, _ = batch_loss(model, data, idx, noise, config, 0.01)
        scaler.scale(loss / batch).backward()
        scaler.step(optim)
        scaler.update()

    step(0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for k in range(1, batches + 1):
        step(k)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    per_batch = (time.perf_counter() - t) / batches
    steps = math.ceil(PAPER_AVERAGES / batch)
    row = {"preset": preset, "device": device, "volume": arch.volume_size, "input": arch.input_size,
           "batch": batch, "amp": amp, "seconds_per_batch": round(per_batch, 4),
           "projected_seconds_per_epoch": round(per_batch * steps, 1),
           "parameters": sum(p.numel() for p in model.parameters()),
           "estimated_train_mb_per_average": round(decoder_bytes_per_volume(arch, True) / 2**20, 1),
           "threads": torch.get_num_threads()}
    return _memory(row, dev)


def measure_encode(preset: str, device: str, n_averages: int, threads: int) -> dict:
    """Peak memory of encoding n_averages and decoding 12 line points, with the automatic batch."""
    import numpy as np
    import torch

    from spicompute.vae.data import Preprocessing
    from spicompute.vae.model import VAE, architecture
    from spicompute.vae.train import decode_volumes, decoder_bytes_per_volume, encode, volume_batch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    arch = architecture(preset, 1)
    data = _fake_data(arch, n_averages, dev)
    model = VAE(arch).to(dev)
    size = arch.volume_size
    prep = Preprocessing(input_size=arch.input_size, volume_size=size, q_max_nm=1.0, q_min_nm=0.05,
                         dq2_nm=1.0 / (arch.input_size // 2), dq3_nm=1.0 / (size // 2), wavelength_nm=0.2,
                         profile_q_nm=[0.0, 2.0], profile=[1.0, 1.0], particle_size_nm=None, log_floor=0.1,
                         q_max_limits={})
    batch = volume_batch(arch, dev)
    t = time.perf_counter()
    encode(model, data)
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    vols = decode_volumes(model, np.linspace(-2, 2, 12)[:, None], prep)
    decode_s = time.perf_counter() - t
    row = {"preset": preset, "device": device, "volume": size, "encoded": n_averages, "decoded": len(vols),
           "volume_batch": batch, "encode_seconds": round(encode_s, 2), "decode_seconds": round(decode_s, 2),
           "estimated_decode_mb_per_volume": round(decoder_bytes_per_volume(arch, False) / 2**20, 1),
           "output_mb": round(vols.nbytes / 2**20, 1), "threads": torch.get_num_threads()}
    return _memory(row, dev)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["demo", "low", "intermediate", "high"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch size per preset (default: 16 demo, 8 low, 4 intermediate, 2 high on CPU; 16 on CUDA)")
    ap.add_argument("--batches", type=int, default=3, help="timed training steps per preset")
    ap.add_argument("--epochs", type=int, default=60, help="epochs for the projected whole training")
    ap.add_argument("--encode", type=int, default=64, help="averages to encode in the memory measurement (0: skip)")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    default_batch = {"demo": 16, "low": 8, "intermediate": 4, "high": 2} if args.device == "cpu" else {}
    if args.one:  # child process: one preset
        preset, batch = args.one.split(":")
        if batch == "encode":
            row = measure_encode(preset, args.device, args.encode, args.threads)
        else:
            row = measure(preset, args.device, int(batch), args.batches, args.amp, args.threads)
        with open(args.out, "w") as fh:
            json.dump(row, fh)
        return 0
    rows, enc_rows = [], []

    def child(preset, what):
        out = f"{args.out}.{preset}.{what}.json"
        cmd = [sys.executable, __file__, "--one", f"{preset}:{what}", "--device", args.device,
               "--batches", str(args.batches), "--threads", str(args.threads), "--encode", str(args.encode),
               "--out", out]
        if args.amp:
            cmd.append("--amp")
        if subprocess.call(cmd):
            return None
        with open(out) as fh:
            row = json.load(fh)
        os.unlink(out)
        return row

    for i, preset in enumerate(args.presets):
        batch = args.batch[i] if args.batch else default_batch.get(preset, 16)
        row = child(preset, str(batch))
        if row is None:
            rows.append({"preset": preset, "device": args.device, "error": "failed (out of memory?)"})
        else:
            row["projected_hours_whole_training"] = round(row["projected_seconds_per_epoch"] * args.epochs / 3600, 2)
            rows.append(row)
        if args.encode:
            row = child(preset, "encode")
            enc_rows.append(row or {"preset": preset, "device": args.device, "error": "failed (out of memory?)"})
    keys = ["preset", "device", "volume", "batch", "seconds_per_batch", "projected_seconds_per_epoch",
            "projected_hours_whole_training", "estimated_train_mb_per_average", "cpu_max_rss_mb", "gpu_peak_mb"]
    print("training step")
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(k, row.get("error", ""))) for k in keys))
    if enc_rows:
        keys = ["preset", "device", "volume", "encoded", "decoded", "volume_batch", "encode_seconds",
                "decode_seconds", "estimated_decode_mb_per_volume", "cpu_max_rss_mb", "gpu_peak_mb"]
        print("encode + decode")
        print(" | ".join(keys))
        for row in enc_rows:
            print(" | ".join(str(row.get(k, row.get("error", ""))) for k in keys))
    with open(args.out, "w") as fh:
        json.dump({"averages": PAPER_AVERAGES, "epochs": args.epochs, "rows": rows, "encode_decode": enc_rows},
                  fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
