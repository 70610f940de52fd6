"""Full-batch linear probes in PyTorch: every class at once, no materialised windows.

A window of ``steps`` consecutive feature steps is scored by the sum over its steps of that
step's features times that step's slice of the weights. The scores of every window of a clip are
therefore a 1-D correlation of the clip's (channels, time) features with the weights, and the
gradient is the correlation of the clip's features with the windows' residuals: memory is that
of the features, not ``steps`` times it. Both are computed as products of spectra, one matrix
product per frequency (see :class:`WindowData`).

The objectives are the reference solvers', so ``C`` means what it means for liblinear:

* ``squared-hinge``, one-vs-rest, for each class k:
  ``0.5 * (|w_k|^2 + b_k^2) + C * sum over windows of max(0, 1 - y * (w_k . x + b_k))^2``
  (liblinear's L2-loss SVM with ``-B 1``: the bias is regularised);
* ``logistic``: ``0.5 * |W|^2 + C * sum over windows of the cross-entropy``, the bias not
  regularised; multinomial, or one sigmoid column for two classes (as scikit-learn).

The solver is truncated Newton on every window (a Newton matrix estimated on a regular subset
of windows is blind to weights whose scores alternate between neighbouring windows, and its
steps overshoot). Each step solves the Newton system by conjugate gradients with a two-part
preconditioner per class (:class:`_Preconditioner`), in the eigenbasis of the Gram matrix ``G``
of all windows (bias column included, computed from lagged products of the steps): on the
``RANK`` leading directions, the class's own Newton matrix, inverted exactly; on the rest,
``R + C * rho_k * G``, with ``R`` the regulariser and ``rho_k`` the class's mean curvature. That
is a change of variables, not of the objective: badly scaled features (conv8's logits, around
-200) fit as easily as standardised ones. Conjugate gradients stop at ``MAX_CG`` steps while
the capped Newton steps keep shrinking the gradient, and get more steps when they stop doing so.
Features are centred internally, with the offset folded into the bias, so float32 spectra and
window scores keep their precision; weights, gradients and sums of the objective are float64.

Convergence: a class (for the multinomial loss, the whole problem) has converged when the norm
of its gradient is at most ``tol`` times its norm at zero weights. A fit that stops earlier
(``max_iter`` Newton steps, or a line search that cannot decrease the objective any more) says
so in its :class:`FitReport`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from soundnet_cli.errors import SoundnetError

Loss = Literal["squared-hinge", "logistic"]
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 100
MAX_CG = 10  # conjugate-gradient steps per Newton step, at first
MAX_CG_GROWN = 160  # ... and at most, when capped steps stop making progress
GRAM_FLOPS = 1e11  # lagged products for the preconditioner: subsample clips beyond this
SPECTRA_BYTES = 256 * 2**20  # transient spectra per chunk of clips in a convolution
SEGMENT_WINDOWS = 512  # windows per overlap-save segment when clips differ in length
RANK = 64  # directions on which each class's Newton matrix is inverted exactly

Tensor = torch.Tensor


@dataclass(frozen=True)
class FitReport:
    """How a fit ended: ``gradient_ratio`` is the worst class's gradient norm over its norm at
    zero weights; ``converged`` when it is at most ``tol``."""

    solver: str
    converged: bool
    iterations: int
    gradient_ratio: float | None  # None: the solver does not say (liblinear)
    tol: float
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON; a number that is not finite is None, never ``NaN``."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(self).items()
        }


@dataclass(frozen=True)
class LinearSolution:
    """Window-level weights in ``cut_windows``' layout (step-major) and one bias per column."""

    coef: np.ndarray  # (columns, steps * channels)
    intercept: np.ndarray  # (columns,)
    report: FitReport


class WindowData:
    """Clips' per-step features packed for window scores by 1-D convolution.

    Clips of one length are stacked as a batch. Clips of several lengths are concatenated in
    time and cut into overlapping segments of equal length (overlap-save), and the windows that
    straddle two clips are masked out. A clip shorter than one window is repeated circularly to
    one window, as ``cut_windows`` does.

    With windows of more than one step the convolutions are products of spectra: a 1-s window
    of conv4 has 22 taps, and a product per frequency costs a fraction of the direct
    convolution. The spectra are as long as a clip (or a segment), so nothing wraps around.
    """

    def __init__(
        self, clips: Sequence[np.ndarray], steps: int, device: str | torch.device = "cpu"
    ) -> None:
        if steps < 1:
            raise SoundnetError(f"a window needs at least one step, not {steps}")
        arrays = [_at_least(np.asarray(c, dtype=np.float32), steps) for c in clips]
        if not arrays:
            raise SoundnetError("a probe needs training clips")
        channels = {a.shape[1] for a in arrays}
        if len(channels) != 1:
            raise SoundnetError(f"clips have different channel counts: {sorted(channels)}")
        self.steps, self.channels = steps, channels.pop()
        self.device = torch.device(device)
        lengths = np.array([len(a) for a in arrays])
        stacked = np.concatenate(arrays)
        del arrays
        if not np.isfinite(stacked).all():
            raise SoundnetError("the probe's features contain NaN or infinite values")
        mean = torch.from_numpy(stacked.mean(0, dtype=np.float64))
        if (lengths == lengths[0]).all():
            x = torch.from_numpy(stacked).view(len(lengths), int(lengths[0]), self.channels)
            windows = int(lengths[0]) - steps + 1
            valid = torch.ones(len(lengths), windows, dtype=torch.bool)
            owner = torch.arange(len(lengths))[:, None].expand(-1, windows)
        else:
            x, valid, owner = _segments(stacked, lengths, steps)
        self.x = (x - mean.float()).transpose(1, 2).contiguous().to(self.device)
        self.mean = mean.to(self.device)
        self.mask = valid.to(self.device, torch.float64)[:, None, :]  # (B, 1, W)
        self.mask32 = self.mask.float()
        self.owner = owner.to(self.device)  # (B, W): the clip each window belongs to
        self.dim = steps * self.channels + 1  # weights and bias
        self.fft_size = _fft_size(self.x.shape[2])
        self.spectra: list[Tensor] = []  # per chunk of clips: (frequencies, clips, channels)
        if steps > 1:
            self.spectra = [
                torch.fft.rfft(x, n=self.fft_size).permute(2, 0, 1).contiguous()
                for x in self.x.split(self._chunk(self.channels))
            ]

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    @property
    def windows(self) -> int:
        return int(self.mask.shape[2])

    @property
    def n_windows(self) -> int:
        return int(self.mask.sum())

    def per_window(self, values: Tensor) -> Tensor:
        """(clips, K) values -> (B, K, W), zero on masked windows."""
        return values.to(self.device, torch.float64)[self.owner].permute(0, 2, 1) * self.mask

    def scores(self, theta: Tensor) -> Tensor:
        """(K, dim) weights and biases -> (B, K, W) float32 window scores, zero on masked
        windows. The offset (the score of the mean features) is added last: the features are
        centred, so float32 loses nothing to a large mean."""
        k = theta.shape[0]
        w = theta[:, :-1].reshape(k, self.steps, self.channels)
        weight = w.transpose(1, 2).float()  # (K, channels, steps)
        if self.steps == 1:  # a plain product
            z = torch.matmul(weight[:, :, 0].contiguous(), self.x)
        else:  # correlation: the product of each clip's spectrum and the weights' conjugate
            spectrum = _conjugate(torch.fft.rfft(weight, n=self.fft_size).permute(2, 1, 0))
            z = torch.cat(
                [
                    torch.fft.irfft(torch.bmm(part, spectrum).permute(1, 2, 0), n=self.fft_size)[
                        :, :, : self.windows
                    ]
                    for part in self.spectra
                ]
            )
        offset = theta[:, -1] + (w * self.mean).sum((1, 2))
        return (z + offset.float()[None, :, None]) * self.mask32

    def adjoint(self, r: Tensor) -> Tensor:
        """The transpose of :meth:`scores`: (B, K, W) window weights -> (K, dim)."""
        k = r.shape[1]
        r = r.float() * self.mask32
        if self.steps == 1:
            grad = torch.einsum("bkt,bdt->kd", r, self.x)[:, :, None]
        else:
            products = torch.zeros(
                self.fft_size // 2 + 1, k, self.channels, dtype=torch.complex64, device=self.device
            )
            start = 0
            for part in self.spectra:
                chunk = r[start : start + part.shape[1]]
                start += part.shape[1]
                spectrum = _conjugate(torch.fft.rfft(chunk, n=self.fft_size).permute(2, 1, 0))
                products += torch.bmm(spectrum, part)
            grad = torch.fft.irfft(products.permute(1, 2, 0), n=self.fft_size)[:, :, : self.steps]
        total = r.sum((0, 2), dtype=torch.float64)
        grad_w = grad.double().transpose(1, 2) + total[:, None, None] * self.mean
        return torch.cat([grad_w.reshape(k, -1), total[:, None]], 1)

    def _chunk(self, columns: int) -> int:
        """Clips per spectral product, so that its transient spectra stay within a bound."""
        frequencies = self.fft_size // 2 + 1
        per_clip = columns * (2 * frequencies * 8 + self.fft_size * 4 + self.windows * 8)
        return max(1, SPECTRA_BYTES // per_clip)

    def gram(self) -> Tensor:
        """The Gram matrix of the windows with a bias column, (dim, dim), from lagged products
        of the steps of (a subsample of) the clips. Every lag is normalised by the same count,
        which keeps the block-Toeplitz matrix positive semi-definite; it only preconditions."""
        s, d = self.steps, self.channels
        batch, _, length = self.x.shape
        every = max(1, math.ceil(2 * s * batch * length * d * d / GRAM_FLOPS))
        x = self.x[::every]
        lags = torch.zeros(s, d, d, dtype=torch.float64, device=self.device)
        for start in range(0, x.shape[0], 64):  # float32 products, float64 sums
            part = x[start : start + 64]
            for lag in range(s):
                product = torch.einsum("bdt,bet->de", part[:, :, : length - lag], part[:, :, lag:])
                lags[lag] += product.double()
        lags /= x.shape[0] * length
        moment = self.mean[:, None] * self.mean[None, :]
        gram = torch.empty(self.dim, self.dim, dtype=torch.float64, device=self.device)
        for i in range(s):
            for j in range(s):
                block = lags[j - i] if j >= i else lags[i - j].T
                gram[i * d : (i + 1) * d, j * d : (j + 1) * d] = block + moment
        gram[:-1, -1] = gram[-1, :-1] = self.mean.repeat(s)
        gram[-1, -1] = 1.0
        return gram * self.n_windows


def _fft_size(length: int) -> int:
    """The least length >= ``length`` whose prime factors are at most 7: FFTs of a prime
    length are several times slower."""
    size = length
    while True:
        rest = size
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def _conjugate(spectrum: Tensor) -> Tensor:
    """The conjugate, materialised and contiguous: a lazily conjugated or strided operand makes
    ``bmm`` copy it one matrix at a time, which costs as much as the product."""
    return torch.conj_physical(spectrum).contiguous()


def _segments(stacked: np.ndarray, lengths: np.ndarray, steps: int) -> tuple[Tensor, ...]:
    """Clips of several lengths, concatenated in time: overlapping segments of equal length
    (each starts ``hop`` steps after the last and shares ``steps - 1`` with it), whether each
    segment's windows lie within one clip, and the clip each belongs to."""
    total = len(stacked)
    hop = SEGMENT_WINDOWS
    count = max(1, math.ceil((total - steps + 1) / hop))
    padded = np.zeros((count * hop + steps - 1, stacked.shape[1]), dtype=np.float32)
    padded[:total] = stacked
    view = np.lib.stride_tricks.sliding_window_view(padded, hop + steps - 1, axis=0)[::hop]
    x = torch.from_numpy(view.transpose(0, 2, 1).copy())  # (B, L, channels)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    window = np.arange(count * hop)
    owner = np.searchsorted(starts, window, side="right") - 1
    valid = (window <= total - steps) & (window - starts[owner] <= lengths[owner] - steps)
    owner = np.minimum(owner, len(lengths) - 1)
    shape = (count, hop)
    return x, torch.from_numpy(valid.reshape(shape)), torch.from_numpy(owner.reshape(shape))


def _at_least(features: np.ndarray, steps: int) -> np.ndarray:
    if features.ndim != 2 or features.shape[0] == 0:
        raise SoundnetError(f"expected features shaped (time, channels), got {features.shape}")
    if features.shape[0] >= steps:
        return features
    reps = -(-steps // features.shape[0])
    return np.tile(features, (reps, 1))[:steps]


class _SquaredHinge:
    """One-vs-rest squared hinge; ``y`` is +1/-1 per window and column, 0 on masked windows."""

    coupled = False

    def __init__(self, y: Tensor) -> None:
        self.y = y
        self.columns = y.shape[1]

    def select(self, cols: Tensor) -> _SquaredHinge:
        return _SquaredHinge(self.y[:, cols])

    def _violation(self, z: Tensor) -> Tensor:
        return (1.0 - self.y * z).clamp_min(0.0) * self.y.abs()

    def value(self, z: Tensor) -> Tensor:
        return self._violation(z).square().sum((0, 2))

    def grad(self, z: Tensor) -> Tensor:
        return -2.0 * self.y * self._violation(z)

    def curvature(self, z: Tensor) -> Tensor:
        return (self._violation(z) > 0).double() * 2.0

    def hessian(self, z: Tensor) -> Callable[[Tensor], Tensor]:
        weight = self.curvature(z).float()  # Newton matrix products are float32
        return lambda v: weight * v


class _BinaryLogistic:
    """One sigmoid column: ``y`` is +1/-1 per window, 0 on masked windows."""

    coupled = False

    def __init__(self, y: Tensor) -> None:
        self.y = y
        self.columns = y.shape[1]

    def select(self, cols: Tensor) -> _BinaryLogistic:
        return _BinaryLogistic(self.y[:, cols])

    def value(self, z: Tensor) -> Tensor:
        return (F.softplus(-self.y * z) * self.y.abs()).sum((0, 2))

    def grad(self, z: Tensor) -> Tensor:
        return -self.y * torch.sigmoid(-self.y * z)

    def curvature(self, z: Tensor) -> Tensor:
        p = torch.sigmoid(z)
        return p * (1 - p) * self.y.abs()

    def hessian(self, z: Tensor) -> Callable[[Tensor], Tensor]:
        weight = self.curvature(z).float()  # Newton matrix products are float32
        return lambda v: weight * v


class _Multinomial:
    """Softmax cross-entropy over the columns; ``onehot`` is zero on masked windows."""

    coupled = True

    def __init__(self, onehot: Tensor, mask: Tensor) -> None:
        self.onehot, self.mask = onehot, mask
        self.columns = onehot.shape[1]

    def select(self, cols: Tensor) -> _Multinomial:
        return self  # the columns are coupled: always all of them

    def value(self, z: Tensor) -> Tensor:
        nll = torch.logsumexp(z, 1, keepdim=True) * self.mask - (z * self.onehot).sum(1, True)
        return nll.sum().reshape(1)

    def grad(self, z: Tensor) -> Tensor:
        return (torch.softmax(z, 1) * self.mask) - self.onehot

    def curvature(self, z: Tensor) -> Tensor:
        """The diagonal blocks' weights: each class's own curvature."""
        p = torch.softmax(z, 1) * self.mask
        return p * (1 - p)

    def hessian(self, z: Tensor) -> Callable[[Tensor], Tensor]:
        p = (torch.softmax(z, 1) * self.mask).float()

        def apply(v: Tensor) -> Tensor:
            return p * v - p * (p * v).sum(1, keepdim=True)

        return apply


_LossObject = _SquaredHinge | _BinaryLogistic | _Multinomial


class _Preconditioner:
    """An approximate inverse of each class's Newton matrix ``R + C * X' D_k X``.

    In the eigenbasis of the Gram matrix ``G`` of the windows: exact on the ``rank`` leading
    directions, along which the windows vary most and the classes' active windows differ most,
    with ``D_k`` the class's own curvature; on the others, ``X' D_k X`` is taken as
    ``rho_k * G`` with ``rho_k`` the class's mean curvature, so that part is diagonal. Both
    parts are symmetric positive definite, so their sum is too. For the multinomial loss these
    are the diagonal blocks, and the biases' sum over classes, which changes no probability, is
    kept where it is.
    """

    def __init__(
        self, data: WindowData, gram: Tensor, reg: Tensor, C: float, rank: int, coupled: bool
    ) -> None:
        self.C, self.coupled, self.n_windows = C, coupled, data.n_windows
        # float32 suffices: any orthonormal basis and positive scales give a valid preconditioner
        values, vectors = _eigh(gram)
        values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
        rank = min(rank, len(gram))
        self.basis = vectors[:, :rank].double().contiguous()  # (dim, r), orthonormal
        self.rest = vectors[:, rank:].contiguous()  # (dim, dim - r), float32
        self.rest_values = values[rank:]
        self.rest_reg = float(reg.mean())
        projected = data.scores(self.basis.T)  # (B, r, W): windows along the leading directions
        self.projected = projected.permute(0, 2, 1).reshape(-1, rank)
        self.reg_block = self.basis.T @ (reg[:, None] * self.basis)
        self._blocks: Tensor | None = None
        self._rest_scale: Tensor | None = None

    def update(self, weights: Tensor) -> None:
        """``weights``: (B, K, W) curvature of each class's windows."""
        k = weights.shape[1]
        w = weights.permute(0, 2, 1).reshape(-1, k).float()
        rows = []
        for j in range(k):
            active = w[:, j].nonzero().squeeze(1)
            y = self.projected[active]
            rows.append(self.reg_block + self.C * ((y * w[active, j, None]).T @ y).double())
        self._blocks = _cholesky(torch.stack(rows))
        rho = (w.sum(0, dtype=torch.float64) / self.n_windows).float().clamp_min(1e-6)
        self._rest_scale = 1.0 / (self.rest_reg + self.C * rho[:, None] * self.rest_values)

    def __call__(self, r: Tensor) -> Tensor:
        assert self._blocks is not None and self._rest_scale is not None
        along = r @ self.basis  # (K, r)
        out = torch.cholesky_solve(along[:, :, None], self._blocks)[:, :, 0] @ self.basis.T
        if self.rest.shape[1]:
            out = out + (((r.float() @ self.rest) * self._rest_scale) @ self.rest.T).double()
        if self.coupled:
            out[:, -1] -= out[:, -1].mean()
        return out


def fit_linear(
    clips: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    n_classes: int,
    steps: int,
    *,
    loss: Loss = "squared-hinge",
    C: float = 0.01,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    device: str | torch.device = "cpu",
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> LinearSolution:
    """Fit window-level linear scores to clip labels (``labels[i]`` in ``range(n_classes)``).

    Two classes give one column scoring class 1 (as scikit-learn's binary estimators); more give
    one column per class. ``init`` (coef, intercept) warm-starts the solver.
    """
    import time

    if n_classes < 2:
        raise SoundnetError("a probe needs training examples of at least two classes")
    if C <= 0:
        raise SoundnetError(f"C must be positive, not {C}")
    if loss not in ("squared-hinge", "logistic"):
        raise SoundnetError(f"unknown loss {loss!r}")
    started = time.perf_counter()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    targets = F.one_hot(y, n_classes).double()
    if n_classes == 2:
        targets = targets[:, 1:]
    with _deterministic(torch.device(device)):
        data = WindowData(clips, steps, device)
        reg = torch.ones(data.dim, dtype=torch.float64, device=data.device)
        if loss == "logistic":
            reg[-1] = 0.0  # scikit-learn does not regularise the intercept
        theta = None
        if init is not None:
            theta = torch.from_numpy(np.hstack([init[0], init[1][:, None]])).to(data.device)
        theta, iterations, ratio = _newton(
            data, _make_loss(loss, data, targets), C, reg, tol, max_iter, theta
        )
    report = FitReport(
        solver=f"torch-newton-{loss}",
        converged=bool(ratio <= tol),
        iterations=iterations,
        gradient_ratio=float(ratio),
        tol=tol,
        seconds=time.perf_counter() - started,
    )
    return LinearSolution(theta[:, :-1].cpu().numpy(), theta[:, -1].cpu().numpy(), report)


def _make_loss(loss: Loss, data: WindowData, targets: Tensor) -> _LossObject:
    if loss == "squared-hinge":
        return _SquaredHinge(data.per_window(2 * targets - 1))
    if targets.shape[1] == 1:
        return _BinaryLogistic(data.per_window(2 * targets - 1))
    return _Multinomial(data.per_window(targets), data.mask)


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN picks convolution algorithms by timing and some reduce in any order: pin them, so
    the same data gives the same probe."""
    if device.type != "cuda":
        yield
        return
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def _newton(
    data: WindowData,
    loss: _LossObject,
    C: float,
    reg: Tensor,
    tol: float,
    max_iter: int,
    theta0: Tensor | None,
) -> tuple[Tensor, int, float]:
    """Truncated Newton with per-group (class, or the whole problem) convergence; returns the
    weights, the Newton steps taken and the worst gradient ratio. Each step works on the
    columns still converging only, so finished classes cost nothing."""
    columns = loss.columns

    def group(a: Tensor) -> Tensor:  # (K, ...) -> one sum per group
        a = a.reshape(a.shape[0], -1).sum(1)
        return a.sum().reshape(1) if loss.coupled else a

    def spread(a: Tensor, k: int) -> Tensor:  # one value per group -> (k, 1)
        return a.expand(k)[:, None] if loss.coupled else a[:, None]

    def gradient(theta: Tensor, z: Tensor, part: _LossObject) -> Tensor:
        return reg * theta + C * data.adjoint(part.grad(z))

    zero = torch.zeros(columns, data.dim, dtype=torch.float64, device=data.device)
    zero_z = torch.zeros(data.batch, columns, data.windows, dtype=torch.float64)
    zero_z = zero_z.to(data.device)
    g_zero = gradient(zero, zero_z, loss)
    if theta0 is None:
        theta, z, g = zero, zero_z, g_zero
    else:
        theta = theta0.to(torch.float64)
        z = data.scores(theta).double()
        g = gradient(theta, z, loss)
    scale = group(g_zero.square()).sqrt().clamp_min(1e-300)
    precondition = _Preconditioner(data, data.gram(), reg, C, RANK, loss.coupled)
    stalled = torch.zeros_like(scale, dtype=torch.bool)
    iterations, cg_limit, recent = 0, MAX_CG, list[float]()
    while True:
        ratio = group(g.square()).sqrt() / scale
        live = (ratio > tol) & ~stalled
        if not live.any() or iterations >= max_iter:
            break
        iterations += 1
        cols = torch.arange(columns, device=data.device)
        if not loss.coupled:
            cols = cols[live]
        part = loss.select(cols)
        theta_c, z_c, g_c = theta[cols], z[:, cols], g[cols]
        curvature = part.hessian(z_c)
        precondition.update(part.curvature(z_c))

        def hess(v: Tensor, curvature: Callable[[Tensor], Tensor] = curvature) -> Tensor:
            return reg * v + C * data.adjoint(curvature(data.scores(v)))

        def objective(theta: Tensor, z: Tensor, part: _LossObject = part) -> Tensor:
            return 0.5 * group(reg * theta.square()) + C * part.value(z)

        ratio_c = ratio if loss.coupled else ratio[live]
        forcing = ratio_c.sqrt().clamp(max=0.1)
        direction, capped = _pcg(hess, -g_c, precondition, forcing, group, spread, cg_limit)
        zd = data.scores(direction)
        slope = group(g_c * direction)
        f = objective(theta_c, z_c)
        step = torch.ones_like(slope)
        for _ in range(40):
            t = spread(step, len(cols))
            ok = objective(theta_c + t * direction, z_c + t[None] * zd) <= f + 1e-4 * step * slope
            ok |= step == 0
            if ok.all():
                break
            step = torch.where(ok, step, step / 2)
        else:  # no decrease along a descent direction: float32 precision is exhausted
            failed = ~ok
            stalled[cols[failed] if not loss.coupled else 0] = True
            step = torch.where(failed, torch.zeros_like(step), step)
        t = spread(step, len(cols))
        theta[cols] = theta_c + t * direction
        z[:, cols] = z_c + t[None] * zd
        g[cols] = gradient(theta[cols], z[:, cols], part)
        # Inexact Newton steps are cheap while they still shrink the gradient; once three capped
        # ones in a row barely do (few windows per dimension), the systems get more steps.
        scale_c = scale if loss.coupled else scale[cols]
        progress = float((group(g[cols].square()).sqrt() / scale_c).max()) / float(ratio_c.max())
        recent = [*recent[-2:], progress] if capped else []
        if len(recent) == 3 and math.prod(recent) > 0.85**3:
            recent = []
            cg_limit = min(2 * cg_limit, MAX_CG_GROWN)
    worst = float((group(g.square()).sqrt() / scale).max())
    return theta, iterations, worst


def _eigh(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the Gram matrix, float32; in float64 when
    float32 does not converge."""
    for dtype in (torch.float32, torch.float64):
        try:
            values, vectors = torch.linalg.eigh(gram.to(dtype))
        except torch.linalg.LinAlgError:
            continue
        return values.float(), vectors.float()
    raise SoundnetError("the probe's preconditioner could not be computed (eigendecomposition)")


def _cholesky(matrix: Tensor) -> Tensor:
    """The Cholesky factor of a (batch of) symmetric positive semi-definite matrices, with as
    little diagonal jitter as it takes."""
    jitter = 0.0
    scale = float(matrix.diagonal(dim1=-2, dim2=-1).mean())
    for _ in range(12):
        if jitter:
            matrix = matrix.clone()
            matrix.diagonal(dim1=-2, dim2=-1).add_(jitter)
        chol, info = torch.linalg.cholesky_ex(matrix)
        if not bool((info != 0).any()):
            return chol
        jitter = max(jitter * 10, 1e-12 * scale)
    raise SoundnetError("the probe's preconditioner is not positive definite")


def _pcg(
    hess: Callable[[Tensor], Tensor],
    b: Tensor,
    precondition: Callable[[Tensor], Tensor],
    forcing: Tensor,
    group: Callable[[Tensor], Tensor],
    spread: Callable[[Tensor, int], Tensor],
    limit: int,
) -> tuple[Tensor, bool]:
    """Preconditioned conjugate gradients for ``hess(x) = b``, one system per group, each
    stopped when its residual is below ``forcing`` times its right-hand side or after ``limit``
    steps; also returns whether any system was stopped by the limit."""
    columns = b.shape[0]

    def per_column(a: Tensor) -> Tensor:
        return spread(a, columns)

    x = torch.zeros_like(b)
    r = b.clone()
    target = forcing * group(b.square()).sqrt()
    live = target > 0
    zr = precondition(r)
    p = zr.clone()
    rz = group(r * zr)
    for _ in range(limit):
        hp = hess(p)
        curvature = group(p * hp)
        alpha = torch.where(live, rz / curvature.clamp_min(1e-300), torch.zeros_like(rz))
        x = x + per_column(alpha) * p
        r = r - per_column(alpha) * hp
        live = live & (group(r.square()).sqrt() > target)
        if not live.any():
            return x, False
        zr = precondition(r)
        rz_new = group(r * zr)
        beta = torch.where(live, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        p = (zr + per_column(beta) * p) * per_column(live.double())
        rz = rz_new
    return x, True
