"""Block kernels of the common-line CC matrix: the best line pair of every average pair.

A kernel takes two blocks of averages (A, B) and returns, for each pair, the largest
product of their unit lines and the two line indices.  :class:`ExhaustiveBlockKernel`
computes the float32 product of every line pair (numpy or torch);
:class:`ScreenedBlockKernel` gets the same maxima at bf16 GEMM speed, as follows.

The exhaustive CC matrix is one ``(M n_lines) x (M n_lines)`` product of unit
lines followed by a max over both line axes of every average pair.  On CPUs with
bf16 matrix units (AMX, AVX512-BF16) and on GPUs, a bf16 product runs 2-4x faster
than float32, but its values carry rounding errors of up to ~10^-2, larger than
the 2·10^-3 the landscape tolerates.  This kernel uses the bf16 product only to
*screen*:

1. ``approx = bf16(X_A) bf16(X_B)^T`` (float32 accumulation, bf16 output);
2. per line of ``B`` and average of ``A``: the max over the lines of ``A``;
3. every line of ``B`` whose screened max lies within ``window`` of its pair's
   screened best may hold the true best; each pair's candidate lines are
   re-scored in float32 against the lines of its average of ``A``, and the
   pair's best is taken over the float32 values only.

``window`` is twice a rigorous bound on ``|approx - exact|`` (:func:`screen_window`),
so the line pair that the float32 exhaustive search would pick is always among
the re-scored ones: the result equals the float32 exhaustive matrix up to float32
summation order (~10^-7), not to bf16 accuracy.  What it saves is the share of
lines that are not re-scored (measured in ``docs/scaling.md``).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("spicompute.ccmatrix")

#: unit roundoff of bfloat16 (8 significant bits, round to nearest even)
BF16_UNIT_ROUNDOFF = 2.0 ** -8
#: after this many average pairs (four default CPU blocks), a screen that re-scores
#: more than FALLBACK_SHARE of the lines saves nothing: the kernel goes float32 exhaustive
FALLBACK_AFTER_PAIRS = 1024
FALLBACK_SHARE = 0.25
#: unit roundoff of float32
F32_UNIT_ROUNDOFF = 2.0 ** -24


def screen_window(max_norm: float, max_rounding_norm: float, n_r: int) -> float:
    """Width of the candidate window of the bf16 screen, in CC units.

    For lines ``a = a~ + e_a`` and ``b = b~ + e_b`` (``a~`` rounded to bf16,
    ``||a||, ||a~|| <= N``, ``||e|| <= E``): by Cauchy-Schwarz
    ``|a~.b~ - a.b| <= 2 E N + E^2``; the float32 accumulation adds
    ``<= n_r u32 N^2`` and rounding the result to bf16 ``<= u |a~.b~|``.  With
    ``delta`` the sum, a pair's true best screens at >= (screened best - 2 delta).
    """
    u, n = BF16_UNIT_ROUNDOFF, float(max_norm)
    e = float(max_rounding_norm)
    inputs = 2 * e * n + e * e + n_r * F32_UNIT_ROUNDOFF * n * n
    delta = inputs + u * (n * n + inputs)
    return 2.0 * delta


class _BufferedKernel:
    """What every block kernel shares: one output buffer per block shape (no allocation
    per block), and :meth:`fork` for another thread (the inputs shared, the buffers and
    any per-thread state its own)."""

    def fork(self):
        k = type(self).__new__(type(self))
        k.__dict__.update(self.__dict__)
        k._reset_per_thread()
        return k

    def _reset_per_thread(self) -> None:
        self._buf = {}

    def _allocate(self, shape: tuple[int, int]):
        raise NotImplementedError

    def _buffer(self, rows: int, cols: int):
        key = (rows, cols)
        if key not in self._buf:
            if len(self._buf) > 3:
                self._buf.clear()
            self._buf[key] = self._allocate(key)
        return self._buf[key]


class ExhaustiveBlockKernel(_BufferedKernel):
    """Max/argmax over both line axes of ``X_A X_B^T`` for one block pair.

    Keeps one output buffer per block shape (no allocation per block).
    """

    def __init__(self, lines: np.ndarray, backend: str, device: str):
        if backend not in ("torch", "numpy"):
            raise ValueError(f"ExhaustiveBlockKernel: backend must be torch or numpy, got {backend!r}")
        self.m, self.nl, self.nr = lines.shape
        self.backend = backend
        self.device = device
        flat = np.ascontiguousarray(lines.reshape(self.m * self.nl, self.nr), dtype=np.float32)
        if backend == "torch":
            import torch

            self.torch = torch
            self.X = torch.from_numpy(flat).to(device)
        else:
            self.X = flat
        self._reset_per_thread()

    def _allocate(self, shape: tuple[int, int]):
        if self.backend == "torch":
            return self.torch.empty(shape, dtype=self.torch.float32, device=self.device)
        return np.empty(shape, dtype=np.float32)

    def __call__(self, a0: int, a1: int, b0: int, b1: int):
        """Returns (cc (a, b) float32, ia (a, b) int16, ib (a, b) int16) as numpy."""
        nl = self.nl
        na, nb = a1 - a0, b1 - b0
        buf = self._buffer(na * nl, nb * nl)
        xa = self.X[a0 * nl:a1 * nl]
        xb = self.X[b0 * nl:b1 * nl]
        if self.backend == "torch":
            torch = self.torch
            torch.matmul(xa, xb.T, out=buf)
            view = buf.view(na, nl, nb, nl)
            # value-only max over theta_b is a fast vectorised pass over the block;
            # the argmax is then needed for one row per pair only
            v1 = view.amax(dim=3)                               # (a, nl, b)
            v, ia = v1.max(dim=1)                               # (a, b)
            ar_a = torch.arange(na, device=buf.device)[:, None]
            ar_b = torch.arange(nb, device=buf.device)[None, :]
            ib = view[ar_a, ia, ar_b, :].argmax(dim=-1)         # (a, b)
            return (v.cpu().numpy(), ia.to(torch.int16).cpu().numpy(),
                    ib.to(torch.int16).cpu().numpy())
        np.matmul(xa, xb.T, out=buf)
        view = buf.reshape(na, nl, nb, nl)
        v1 = view.max(axis=3)                                   # (a, nl, b)
        ia = v1.argmax(axis=1)                                  # (a, b)
        v = np.take_along_axis(v1, ia[:, None, :], axis=1)[:, 0, :]
        ib = view[np.arange(na)[:, None], ia, np.arange(nb)[None, :], :].argmax(axis=-1)
        return v, ia.astype(np.int16), ib.astype(np.int16)


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16); elsewhere torch
    emulates the bf16 product and the screen is slower than float32."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:   # a torch without the probes: assume not
        return False


class ScreenedBlockKernel(_BufferedKernel):
    """Max/argmax over both line axes of ``X_A X_B^T`` via a bf16 screen (torch).

    Same call signature and result as :class:`ExhaustiveBlockKernel`
    (float32, every line pair); works on CPU and CUDA.
    ``rescored`` / ``screened`` count the (pair, line) rows re-scored in float32
    and those screened (their ratio is the float32 work left).  Where the screen
    re-scores more than ``FALLBACK_SHARE`` of the lines (noisy averages whose CC
    over line pairs is flat), it saves nothing and the kernel turns to the float32
    exhaustive product for the remaining blocks (``exhaustive``).
    """

    def __init__(self, lines: np.ndarray, device: str = "cpu"):
        import torch

        self.torch = torch
        self.m, self.nl, self.nr = lines.shape
        flat = np.ascontiguousarray(lines.reshape(self.m * self.nl, self.nr), dtype=np.float32)
        self.X = torch.from_numpy(flat).to(device)
        self.Xh = self.X.to(torch.bfloat16)
        self.XhT = self.Xh.T.contiguous()
        rounding = flat.astype(np.float64) - self.Xh.float().cpu().numpy()
        norms = np.sqrt((flat.astype(np.float64) ** 2).sum(1))
        rounding_norms = np.sqrt((rounding ** 2).sum(1))
        self.window = screen_window(norms.max(initial=0.0) * (1 + BF16_UNIT_ROUNDOFF),
                                    rounding_norms.max(initial=0.0), self.nr)
        self.device = device
        if str(device) == "cpu" and not cpu_has_bf16_units():
            log.warning("ccmatrix.backend bf16: this CPU has no bf16 matrix units (AMX / AVX512-BF16): "
                        "the screen is emulated and slower than backend numpy (same result)")
        self._reset_per_thread()

    def _reset_per_thread(self) -> None:
        super()._reset_per_thread()
        self.rescored, self.screened, self.exhaustive, self._fallback = 0, 0, False, None

    def _allocate(self, shape: tuple[int, int]):
        return self.torch.empty(shape, dtype=self.torch.bfloat16, device=self.device)

    @staticmethod
    def _dense_rows(counts, n_cols: int):
        """(a,) bool: the averages of A to re-score densely.  The sparse product pads every
        average to the largest count left, so the k largest go dense where that minimises
        ``k n_cols + (a - k) count_(k+1)`` (equal cost per product assumed)."""
        ordered, order = counts.sort(descending=True)
        na = len(counts)
        rest = list(ordered.tolist()) + [0]
        cost = [k * n_cols + (na - k) * rest[k] for k in range(na + 1)]
        k = min(range(na + 1), key=cost.__getitem__)
        dense = counts.new_zeros(na, dtype=bool)
        dense[order[:k]] = True
        return dense

    def _rescore_dense(self, rows, lines_a, lines_b, full, arg_a) -> int:
        """Averages ``rows`` of A against every line of B (the exhaustive float32 product)."""
        exact = self.torch.matmul(lines_a[rows], lines_b.T)              # (d, nl, b*nl)
        full[rows, :-1], arg_a[rows, :-1] = exact.max(dim=1)
        return len(rows) * lines_b.shape[0]

    def _rescore_sparse(self, candidate, lines_a, lines_b, rows, full, arg_a) -> int:
        """Each candidate column of B against the lines of its average of A: one batched
        product, columns padded to the largest group (padded slots write a dump column
        past the end).  Fills ``full`` / ``arg_a`` at ``rows``; returns the count."""
        torch = self.torch
        where = torch.nonzero(candidate)                                 # (k, 2), sorted by row
        counts = candidate.sum(dim=1)
        width = int(counts.max())
        slot = torch.arange(len(where), device=where.device) - (torch.cumsum(counts, 0) - counts)[where[:, 0]]
        dump = candidate.shape[1]
        cols = torch.full((len(rows), width), dump, dtype=torch.long, device=where.device)
        cols[where[:, 0], slot] = where[:, 1]
        exact = torch.bmm(lines_b[cols.clamp(max=dump - 1)], lines_a.transpose(1, 2))   # (r, w, nl)
        col_best, col_arg = exact.max(dim=2)                             # (r, w)
        full[rows] = full[rows].scatter_(1, cols, col_best)
        arg_a[rows] = arg_a[rows].scatter_(1, cols, col_arg)
        return len(where)

    def __call__(self, a0: int, a1: int, b0: int, b1: int):
        """Returns (cc (a, b) float32, ia (a, b) int16, ib (a, b) int16) as numpy."""
        torch, nl = self.torch, self.nl
        na, nb = a1 - a0, b1 - b0
        dump = nb * nl
        full = torch.full((na, dump + 1), -torch.inf, dtype=torch.float32, device=self.X.device)
        arg_a = torch.zeros((na, dump + 1), dtype=torch.long, device=self.X.device)
        lines_a = self.X[a0 * nl:a1 * nl].view(na, nl, self.nr)
        lines_b = self.X[b0 * nl:b1 * nl]
        if self.exhaustive:
            self.rescored += dump * na
            self.screened += dump * na
            return self._exhaustive_kernel()(a0, a1, b0, b1)
        approx = self._buffer(na * nl, nb * nl)
        torch.matmul(self.Xh[a0 * nl:a1 * nl], self.XhT[:, b0 * nl:b1 * nl], out=approx)
        # bf16 bit patterns as int16 order like the values where these are >= 0, so the max
        # over the lines of A (the middle axis: a fast, contiguous reduction) is an integer
        # one; a column whose products are all < 0 is ordered backwards: integer min there
        codes = approx.view(torch.int16).view(na, nl, nb * nl)
        best_code = codes.amax(dim=1)                                    # (a, b*nl)
        negative = torch.nonzero(best_code < 0)
        if len(negative):
            best_code[negative[:, 0], negative[:, 1]] = \
                codes[negative[:, 0], :, negative[:, 1]].amin(dim=-1)
        screened = best_code.view(torch.bfloat16).float().view(na, nb, nl)
        pair_best = screened.amax(dim=2)                                 # (a, b)
        candidate = (screened >= (pair_best - self.window)[..., None]).view(na, nb * nl)
        # float32 re-scoring, into (value, line of A) per column of B; columns that are no
        # pair's candidate stay -inf.  An average of A with many candidates (a flat, noisy
        # CC) is re-scored densely against the whole block; the rest sparsely.
        dense = self._dense_rows(candidate.sum(dim=1), dump)
        n_rescored = 0
        if bool(dense.any()):
            n_rescored += self._rescore_dense(torch.nonzero(dense).squeeze(1), lines_a, lines_b, full, arg_a)
        if not bool(dense.all()):
            rows = torch.nonzero(~dense).squeeze(1)
            n_rescored += self._rescore_sparse(candidate[rows], lines_a[rows], lines_b, rows, full, arg_a)
        result = self._finish(n_rescored, full, arg_a, na, nb)
        if self.screened >= FALLBACK_AFTER_PAIRS * nl and self.rescored > FALLBACK_SHARE * self.screened:
            self.exhaustive = True
            log.info("bf16 screen: %.0f %% of the lines re-scored in float32 (a flat, noisy CC): "
                     "float32 exhaustive from here on", 100 * self.rescored / self.screened)
        return result

    def _exhaustive_kernel(self):
        """The float32 exhaustive block kernel (numpy on the CPU, torch on a GPU)."""
        if self._fallback is None:
            lines = self.X.cpu().numpy().reshape(self.m, self.nl, self.nr)
            cpu = str(self.device) == "cpu"
            self._fallback = ExhaustiveBlockKernel(lines, "numpy" if cpu else "torch", self.device)
        return self._fallback

    def _finish(self, n_rescored: int, full, arg_a, na: int, nb: int):
        """The pair maxima from the re-scored columns."""
        torch, nl, dump = self.torch, self.nl, nb * self.nl
        value, ib = full[:, :dump].view(na, nb, nl).max(dim=2)          # (a, b)
        ia = torch.gather(arg_a[:, :dump].view(na, nb, nl), 2, ib[..., None])[..., 0]
        self.rescored += n_rescored
        self.screened += dump * na
        return (value.cpu().numpy(), ia.to(torch.int16).cpu().numpy(),
                ib.to(torch.int16).cpu().numpy())


def block_kernel(lines: np.ndarray, backend: str, device: str = "cpu"):
    """The block kernel of ``backend`` (``torch``, ``numpy`` or ``bf16``)."""
    if backend == "bf16":
        return ScreenedBlockKernel(lines, device)
    return ExhaustiveBlockKernel(lines, backend, device)
