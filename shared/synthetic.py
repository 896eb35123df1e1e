"""Synthetic data: a KernelSynth pretraining corpus and a multi-site demo data set.

`kernel_synth` draws series from Gaussian processes whose kernels are random sums and
products of a small kernel bank. `demo_sites` builds hourly, load-like series for several
sites that share a daily and weekly shape but differ in level, shape, trend and noise.
Everything is deterministic given the seed.

References: Ansari et al., "Chronos: Learning the Language of Time Series", 2024 (KernelSynth).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEASONAL_PERIODS = (24, 48, 96, 168, 336, 7, 14, 30, 52, 12, 4)  # natural seasons, in points
JITTERS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # diagonal jitter tried in turn, times the mean variance


def _abs_diff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(np.subtract.outer(x, y))


def exp_sine_squared(x: np.ndarray, y: np.ndarray, period: float, length_scale: float = 1.0) -> np.ndarray:
    """Periodic kernel exp(-2 sin^2(pi |x - y| / period) / length_scale^2)."""
    return np.exp(-2.0 * np.sin(np.pi * _abs_diff(x, y) / period) ** 2 / length_scale**2)


def dot_product(x: np.ndarray, y: np.ndarray, sigma0: float) -> np.ndarray:
    """Linear kernel sigma0^2 + x y."""
    return sigma0**2 + np.multiply.outer(x, y)


def rbf(x: np.ndarray, y: np.ndarray, length_scale: float) -> np.ndarray:
    """Squared-exponential kernel exp(-|x - y|^2 / (2 length_scale^2))."""
    return np.exp(-0.5 * (_abs_diff(x, y) / length_scale) ** 2)


def rational_quadratic(x: np.ndarray, y: np.ndarray, alpha: float, length_scale: float = 1.0) -> np.ndarray:
    """Rational-quadratic kernel (1 + |x - y|^2 / (2 alpha length_scale^2))^-alpha."""
    return (1.0 + _abs_diff(x, y) ** 2 / (2.0 * alpha * length_scale**2)) ** -alpha


def white(x: np.ndarray, y: np.ndarray, noise_level: float) -> np.ndarray:
    """White-noise kernel: noise_level where x == y, else 0."""
    return noise_level * np.equal.outer(x, y)


def constant(x: np.ndarray, y: np.ndarray, value: float = 1.0) -> np.ndarray:
    """Constant kernel."""
    return np.full((len(x), len(y)), value)


def kernel_bank(length: int) -> list[tuple]:
    """The KernelSynth bank as (kernel, params) pairs for `length` points on t in [0, 1].

    Periods are the natural seasons in points, kept if shorter than half the series and
    converted to t-units (one point is 1 / (length - 1)). The periodic length scale is left
    at its default here; `kernel_synth` draws it anew each time a periodic kernel is picked.
    """
    step = 1.0 / (length - 1)
    bank = [(exp_sine_squared, {"period": p * step}) for p in SEASONAL_PERIODS if p < length / 2]
    bank += [(dot_product, {"sigma0": s}) for s in (0.0, 0.1, 1.0, 10.0)]
    bank += [(rbf, {"length_scale": ls}) for ls in (0.1, 1.0, 10.0)]
    bank += [(rational_quadratic, {"alpha": a}) for a in (0.1, 1.0, 10.0)]
    bank += [(white, {"noise_level": n}) for n in (0.1, 1.0)]
    bank += [(constant, {})]
    return bank


def _random_kernel_matrix(t: np.ndarray, bank: list[tuple], max_kernels: int, rng: np.random.Generator) -> np.ndarray:
    """Covariance over `t` of 1..max_kernels bank kernels, joined left to right by random + or *."""
    covs = []
    for index in rng.integers(len(bank), size=rng.integers(1, max_kernels + 1)):
        kernel, params = bank[index]
        if kernel is exp_sine_squared:
            params = {**params, "length_scale": rng.uniform(0.5, 2.0)}
        covs.append(kernel(t, t, **params))
    cov = covs[0]
    for other in covs[1:]:
        cov = cov + other if rng.random() < 0.5 else cov * other
    return cov


def _gp_draws(cov: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """`n_draws` zero-mean Gaussian draws [n_draws, len(cov)] with covariance `cov`, via one Cholesky.

    Adds jitter 1e-6 (times the mean variance) to the diagonal, growing it tenfold until
    the factorisation succeeds.
    """
    z = rng.standard_normal((len(cov), n_draws))
    scale = np.mean(np.diag(cov))
    for jitter in JITTERS:
        try:
            return (np.linalg.cholesky(cov + jitter * scale * np.eye(len(cov))) @ z).T
        except np.linalg.LinAlgError:
            continue  # try the next, larger jitter
    raise np.linalg.LinAlgError("covariance not positive definite even with large jitter")


def kernel_synth(n_series: int, length: int, seed: int, max_kernels: int = 5, draws_per_kernel: int = 4) -> np.ndarray:
    """Pretraining corpus [n_series, length] float32, KernelSynth-style.

    For each random kernel: draw j ~ U{1..max_kernels} kernels from `kernel_bank` (with
    replacement), join them with random + or *, and take `draws_per_kernel` zero-mean GP
    draws on t = linspace(0, 1, length) from one Cholesky factor (consecutive rows share a
    kernel; 1 gives the original one draw per kernel). Each draw then gets its own level
    and scale, y = a + b * draw with a ~ N(0, 5) and b ~ lognormal(0, 1), so that the
    corpus spans scales like real data (the model normalises per window).

    References: Ansari et al., "Chronos: Learning the Language of Time Series", 2024.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, length)
    bank = kernel_bank(length)
    corpus = np.empty((n_series, length), dtype=np.float32)
    for first in range(0, n_series, draws_per_kernel):
        count = min(draws_per_kernel, n_series - first)
        draws = _gp_draws(_random_kernel_matrix(t, bank, max_kernels, rng), count, rng)
        levels = rng.normal(0.0, 5.0, (count, 1))
        scales = rng.lognormal(0.0, 1.0, (count, 1))
        corpus[first : first + count] = levels + scales * draws
    return corpus


def corpus_frame(values: np.ndarray, freq: str = "h", start: str = "2000-01-01") -> pd.DataFrame:
    """Wrap a corpus array [n, length] as a long frame [unique_id, ds, y] (unique_id 'ks00000' ...).

    For writing the corpus to a file; every series starts at `start` on a regular `freq` grid.
    """
    n, length = values.shape
    ds = pd.date_range(start, periods=length, freq=freq)
    return pd.DataFrame(
        {
            "unique_id": np.repeat([f"ks{i:05d}" for i in range(n)], length),
            "ds": np.tile(ds, n),
            "y": values.reshape(-1),
        }
    )


def _daily_curve(day_phase: np.ndarray, amplitudes: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Sum of harmonics k = 1, 2, ... of the day, scaled to unit standard deviation."""
    k = np.arange(1, len(amplitudes) + 1)
    curve = np.cos(np.multiply.outer(day_phase, k) + phases) @ amplitudes
    return curve / np.sqrt(np.sum(amplitudes**2) / 2.0)


def _ar1(n: int, phi: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) noise with coefficient `phi` and marginal standard deviation `sigma`."""
    shocks = rng.normal(0.0, sigma * np.sqrt(1.0 - phi**2), n)
    noise = np.empty(n)
    noise[0] = rng.normal(0.0, sigma)
    for i in range(1, n):
        noise[i] = phi * noise[i - 1] + shocks[i]
    return noise


def demo_sites(
    n_sites: int = 8,
    length: int = 24 * 60,
    seed: int = 0,
    series_per_site: int | tuple[int, int] = (1, 3),
    freq: str = "h",
    start: str = "2024-01-01",
) -> pd.DataFrame:
    """Multi-site demo data in long format: columns [site, unique_id, ds, y]. Hourly by default.

    Sites share structure but differ. All inherit one daily profile (three harmonics of the
    day, like an electricity load curve) and a weekend dip (5-15 % of the level). Each site
    has its own level (lognormal, about 1 to 1000 across sites), its own daily shape (the
    shared harmonics with perturbed amplitude ratios, a phase shift of up to 1.5 h and a
    small fourth harmonic), daily amplitude (std 15-40 % of the level), weekend dip (0.5-1.5
    times the shared one), linear trend (none for a third of the sites), a 10-30 % level
    shift for about a quarter of the sites, and AR(1) noise with phi in [0.3, 0.9] and
    marginal std 5-25 % of the daily amplitude. A site holds `series_per_site` series (a
    count, or an inclusive (low, high) range drawn per site): scaled copies of its pattern
    with their own noise, named like "site03/s1" (sites and series count from 0).
    """
    rng = np.random.default_rng(seed)
    ds = pd.date_range(start, periods=length, freq=freq)
    day_phase = 2.0 * np.pi * (ds.hour.to_numpy() + ds.minute.to_numpy() / 60.0) / 24.0
    weekend = (ds.day_of_week >= 5).astype(float)
    progress = np.linspace(0.0, 1.0, length)
    low, high = (series_per_site, series_per_site) if isinstance(series_per_site, int) else series_per_site

    shared_amplitudes = np.array([1.0, rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)])
    shared_phases = rng.uniform(0.0, 2.0 * np.pi, 3)
    shared_weekend_dip = rng.uniform(0.05, 0.15)

    frames = []
    for s in range(n_sites):
        level = rng.lognormal(np.log(30.0), 1.5)
        lag = 2.0 * np.pi * rng.uniform(-1.5, 1.5) / 24.0  # shift of the daily shape, in radians
        amplitudes = np.append(shared_amplitudes * rng.lognormal(0.0, 0.3, 3), rng.uniform(0.0, 0.2))
        phases = np.append(shared_phases + lag * np.arange(1, 4), rng.uniform(0.0, 2.0 * np.pi))
        amplitude = level * rng.uniform(0.15, 0.4)
        weekly = 1.0 - shared_weekend_dip * rng.uniform(0.5, 1.5) * weekend
        pattern = (level + amplitude * _daily_curve(day_phase, amplitudes, phases)) * weekly
        if rng.random() < 2 / 3:
            pattern += level * rng.normal(0.0, 0.2) * progress
        if rng.random() < 0.25:  # a level shift somewhere in the middle half
            shift_at = rng.integers(length // 4, 3 * length // 4)
            pattern += level * rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3) * (np.arange(length) >= shift_at)
        phi = rng.uniform(0.3, 0.9)
        sigma = amplitude * rng.uniform(0.05, 0.25)

        site = f"site{s:02d}"
        for j in range(rng.integers(low, high + 1)):
            scale = rng.lognormal(0.0, 0.3)
            y = scale * pattern + _ar1(length, phi, scale * sigma, rng)
            frames.append(pd.DataFrame({"site": site, "unique_id": f"{site}/s{j}", "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)
