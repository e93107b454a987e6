"""Time each transposed 3D convolution of the VAE decoder, with and without oneDNN (mkldnn).

On CPU, PyTorch runs ``ConvTranspose3d`` through oneDNN by default.  This times every
decoder layer of a preset on its real input shape (batch ``--batch``): the forward pass,
and forward + backward, once with ``torch.backends.mkldnn`` on (what training uses today)
and once off (PyTorch's own kernels), so a per-layer choice can be made from a measurement
(the rule the decoder uses: ``spicompute.vae.model.native_deconv``).

    python benchmarks/bench_decoder_layers.py --presets demo low --out decoder_layers.json

Results differ between the two paths by float rounding only (reported as ``max_rel_diff``),
but any switch changes training numerically: re-run ``benchmarks/volumes_truth.py`` before
changing what the VAE uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def _time(fn, repeats: int) -> float:
    fn()                                      # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def decoder_layers(preset: str, batch: int, repeats: int) -> list[dict]:
    import torch

    from spicompute.vae.model import VAE, architecture, onednn_off

    arch = architecture(preset, 1)
    decoder = VAE(arch).decoder
    c, s = decoder.base
    x = torch.randn(batch, c, s, s, s)
    rows = []
    for layer in decoder.deconv:
        if not isinstance(layer, torch.nn.ConvTranspose3d):
            x = layer(x)
            continue
        inp = x.detach().requires_grad_(True)
        row = {"preset": preset, "layer": f"{layer.in_channels}->{layer.out_channels}, stride {layer.stride[0]}",
               "input": list(inp.shape[1:]), "batch": batch}
        outs = {}
        for name, context in (("mkldnn", contextlib.nullcontext), ("native", onednn_off)):
            with context():
                with torch.no_grad():
                    row[f"{name}_forward_ms"] = round(1e3 * _time(lambda: layer(inp), repeats), 2)

                def step():
                    inp.grad = None
                    layer(inp).sum().backward()

                row[f"{name}_forward_backward_ms"] = round(1e3 * _time(step, repeats), 2)
                with torch.no_grad():
                    outs[name] = layer(inp)
        ref = outs["mkldnn"]
        row["max_rel_diff"] = float((outs["native"] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        rows.append(row)
        with torch.no_grad():
            x = layer(x)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["demo", "low"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        rows += decoder_layers(preset, args.batch, args.repeats)
    for r in rows:
        print(f"{r['preset']:6s} {r['layer']:22s} in {r['input']}: forward {r['mkldnn_forward_ms']:8.1f} (mkldnn) "
              f"{r['native_forward_ms']:8.1f} (native) ms; forward+backward {r['mkldnn_forward_backward_ms']:8.1f} / "
              f"{r['native_forward_backward_ms']:8.1f} ms; max rel diff {r['max_rel_diff']:.1e}")
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
