"""Encoder, decoder and presets of the VAE (paper section 2.3.1, appendix B.2).

Encoder: a 2D CNN on the normalised average (two channels: log intensity and
the observed mask) -- four 3x3 convolutions of 16/32/64/128 channels --
flattened and concatenated with the orientation quaternion and log gain, then
two fully connected layers to the latent mean and log variance.

Decoder: latent -> fully connected -> a small 3D block -> 3D transposed
convolutions (3x3x3) up to the volume edge L -> softplus (non-negative) ->
mean over the 48 elements of Oh (:func:`spicompute.orient.symmetry.symmetrize_oh`).

Presets (``volume_size`` = L, ``input_size`` = n of the 2D input):

====== ===== ===== =====================================================
preset L     n     decoder (channels x edge)
====== ===== ===== =====================================================
demo   27    27    64x3 -> 32x3 -> 16x9 -> 8x27 -> 1x27 (CPU, default pipeline)
low    81    81    128x9 -> 64x9 -> 32x27 -> 16x81 -> 8x81 -> 1x81
inter. 161   161   128x9 -> 64x9 -> 32x27 -> 16x81 -> 8x161 -> 1x161 (paper)
high   243   243   128x9 -> 64x9 -> 32x27 -> 16x81 -> 8x243 -> 1x243
====== ===== ===== =====================================================

Transposed convolutions with kernel 3 grow an edge n to n (stride 1,
padding 1), 3n (stride 3) or 2n - 1 (stride 2, padding 1), so every preset
ends on an odd edge with the origin at the centre voxel, where Oh acts exactly.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from spicompute.errors import InputError
from spicompute.orient.symmetry import symmetrize_oh

SOFTPLUS_INV_ONE = 0.5413248546129181  # softplus^-1(1): the untrained decoder outputs ~1


@dataclass
class Architecture:
    """Network shape.  ``decoder`` lists (out_channels, stride) per transposed convolution."""

    latent_dim: int = 1
    input_size: int = 27
    encoder_channels: tuple = (16, 32, 64, 128)
    encoder_strides: tuple = (1, 3, 3, 1)
    hidden: int = 256
    base_channels: int = 64
    base_size: int = 3
    decoder: tuple = ((32, 1), (16, 3), (8, 3), (1, 1))
    condition_dim: int = 5

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder"] = [list(x) for x in self.decoder]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        d = dict(d)
        d["encoder_channels"] = tuple(d["encoder_channels"])
        d["encoder_strides"] = tuple(d["encoder_strides"])
        d["decoder"] = tuple(tuple(x) for x in d["decoder"])
        return cls(**d)

    @property
    def volume_size(self) -> int:
        n = self.base_size
        for _, stride in self.decoder:
            n = {1: n, 2: 2 * n - 1, 3: 3 * n}[stride]
        return n

    def encoder_output_size(self) -> int:
        n = self.input_size
        for s in self.encoder_strides:
            n = (n - 1) // s + 1
        return n


_PAPER_DECODER = ((64, 1), (32, 3), (16, 3))
PRESETS: dict[str, dict] = {
    "demo": dict(input_size=27, encoder_strides=(1, 3, 3, 1), base_channels=64, base_size=3,
                 decoder=((32, 1), (16, 3), (8, 3), (1, 1))),
    "low": dict(input_size=81, encoder_strides=(1, 3, 3, 1), base_channels=128, base_size=9,
                decoder=_PAPER_DECODER + ((8, 1), (1, 1))),
    "intermediate": dict(input_size=161, encoder_strides=(2, 3, 3, 1), base_channels=128, base_size=9,
                         decoder=_PAPER_DECODER + ((8, 2), (1, 1))),
    "high": dict(input_size=243, encoder_strides=(3, 3, 3, 1), base_channels=128, base_size=9,
                 decoder=_PAPER_DECODER + ((8, 3), (1, 1))),
}


def architecture(preset: str, latent_dim: int) -> Architecture:
    if preset not in PRESETS:
        raise KeyError(preset)
    return Architecture(latent_dim=int(latent_dim), **PRESETS[preset])


class Encoder(nn.Module):
    """(B, 2, n, n) image + (B, condition_dim) -> (mu (B, d), logvar (B, d))."""

    def __init__(self, arch: Architecture):
        super().__init__()
        layers, cin = [], 2
        for cout, stride in zip(arch.encoder_channels, arch.encoder_strides):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU()]
            cin = cout
        self.conv = nn.Sequential(*layers)
        flat = cin * arch.encoder_output_size() ** 2
        self.head = nn.Sequential(nn.Linear(flat + arch.condition_dim, arch.hidden), nn.ReLU(),
                                  nn.Linear(arch.hidden, 2 * arch.latent_dim))
        self.latent_dim = arch.latent_dim

    def forward(self, image: torch.Tensor, condition: torch.Tensor):
        h = self.conv(image).flatten(1)
        out = self.head(torch.cat([h, condition], dim=1))
        return out[:, : self.latent_dim], out[:, self.latent_dim:]


# On CPU, PyTorch runs transposed 3D convolutions through oneDNN (mkldnn), whose forward pass is
# slower than PyTorch's own kernel on the non-overlapping upsampling layers (stride = kernel size:
# each input voxel writes its own block) and on the 1-channel output layer (the demo decoder's last
# layer at 27^3: 33.7 against 8.1 ms), and faster on the overlapping ones (stride 1 with more
# channels, stride 2; benchmarks/bench_decoder_layers.py, docs/vae_volumes.md).  A fixed rule, not a
# timing made at run time, so that every run computes the same numbers.
def native_deconv(layer: nn.Module) -> bool:
    """Whether a decoder layer's forward pass runs on PyTorch's own CPU kernel (oneDNN off)."""
    return isinstance(layer, nn.ConvTranspose3d) and (
        tuple(layer.stride) == tuple(layer.kernel_size) or layer.out_channels == 1)


@contextmanager
def onednn_off():
    """oneDNN off for the ops inside (only this flag: ``torch.backends.mkldnn.flags`` also resets
    the TF32 and determinism flags, and warns about Intel GPUs on every use)."""
    was = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(_enabled=was, _fp32_precision=None)


class Decoder(nn.Module):
    """(B, d) latent -> (B, L, L, L) non-negative, Oh-symmetric volume (normalised intensity)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.base = (arch.base_channels, arch.base_size)
        self.fc = nn.Sequential(nn.Linear(arch.latent_dim, arch.hidden), nn.ReLU(),
                                nn.Linear(arch.hidden, arch.base_channels * arch.base_size ** 3), nn.ReLU())
        layers, cin = [], arch.base_channels
        for i, (cout, stride) in enumerate(arch.decoder):
            pad = 0 if stride == 3 else 1
            layers.append(nn.ConvTranspose3d(cin, cout, 3, stride=stride, padding=pad))
            if i < len(arch.decoder) - 1:
                layers.append(nn.ReLU())
            cin = cout
        self.deconv = nn.Sequential(*layers)
        with torch.no_grad():
            self.deconv[-1].bias.fill_(SOFTPLUS_INV_ONE)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, s = self.base
        h = self.fc(z).view(-1, c, s, s, s)
        for layer in self.deconv:
            if h.device.type == "cpu" and native_deconv(layer):
                with onednn_off():
                    h = layer(h)
            else:
                h = layer(h)
        raw = nn.functional.softplus(h)[:, 0]
        return symmetrize_oh(raw)


class VAE(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)

    def forward(self, image, condition, noise):
        """Returns (volumes (B, L, L, L), mu, logvar); ``noise`` (B, d) is the reparameterisation draw."""
        mu, logvar = self.encoder(image, condition)
        z = mu + torch.exp(0.5 * logvar) * noise
        return self.decoder(z), mu, logvar


def load_vae(model_path):
    """(model, Architecture, Preprocessing) of a trained VAE: weights plus the .json side file.

    Weights are loaded with ``weights_only=True``; one-line errors name the file.
    """
    from spicompute.io.storage import load_torch
    from spicompute.vae.data import Preprocessing

    model_path = Path(model_path)
    side_path = model_path.with_suffix(".json")
    try:
        side = json.loads(side_path.read_text())
        arch = Architecture.from_dict(side["architecture"])
        prep = Preprocessing.from_dict(side["preprocessing"])
    except FileNotFoundError:
        raise InputError(side_path, None, "model description not found (run the vae stage)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(side_path, "architecture", f"not a VAE description ({exc})") from None
    model = VAE(arch)
    if not model_path.exists():
        raise InputError(model_path, None, "weights not found (run the vae stage)")
    state = load_torch(model_path, "VAE weights file")
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise InputError(model_path, None, f"not VAE weights matching {side_path.name} ({exc})") from None
    return model, arch, prep
