"""One test per row of docs/reliability.md (core part): bad inputs to resampling, schedules,
potentials, metrics, loaders, small networks and data, and what each now does.

Each case is ``(id, call, run, expect)``: ``run(files)`` makes the call (``files`` holds prepared
bad files), ``expect`` is ``("raises", exception type, message regex[, class name])`` or
``("returns", check)``. The ids are the row numbers of the table.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

NAN, INF = math.nan, math.inf


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Case(NamedTuple):
    id: int
    call: str
    run: Callable[[dict], Any]
    expect: tuple


# ------------------------------------------------------------------------------------ helpers


def _sched(name, *args, **kwargs):
    from smcdiff.kernels import schedules

    return getattr(schedules, name)(*args, **kwargs)


def _resampling(name, *args, **kwargs):
    import smcdiff.resampling as R

    return getattr(R, name)(*args, **kwargs)


def _custom_scheme(make):
    """Resampler(scheme=<custom>, ess_threshold=1) on log-weights with a zero weight at index 1."""
    from smcdiff.resampling import Resampler

    lw = torch.tensor([[0.0, -INF, 0.0], [0.0, 0.0, 0.0]])
    return Resampler(lambda log_weights, generator, num=None: make(), ess_threshold=1.0)(lw, gen())


def _weights(name):
    import smcdiff.weights as W

    return getattr(W, name)


def _xs(n=3):
    x = torch.zeros(n, 2, dtype=torch.float64)
    return x, torch.ones(n, dtype=torch.float64), x


def _ratio(values, **kwargs):
    v = torch.tensor(values, dtype=torch.float64)
    key = "log_ratio" if kwargs.pop("log", False) else "prob"
    return _weights("DensityRatio")(**{key: lambda x, s: v}, **kwargs)(*_xs(len(values)))


def _detector(values, **kwargs):
    v = torch.tensor(values, dtype=torch.float64)[:, None]
    occ = kwargs.pop("occurrence", torch.tensor([0.5]))
    return _weights("DetectorLikelihood")(lambda x0: v, [0], occ, **kwargs)(*_xs(len(values)))


def _reward(values, lam=1.0):
    v = torch.tensor(values, dtype=torch.float64)
    return _weights("RewardPotential")(lambda x0: v, lam=lam)(*_xs(len(values)))


def _gauss(**kwargs):
    args = dict(A=torch.eye(2), y=torch.tensor([1.0, 0.0]), R=0.1 * torch.eye(2)) | kwargs
    return _weights("GaussianLikelihood")(**args)(*_xs(3))


def _program(value):
    import pyro

    @_weights("program")
    def prog(x, sigma, x0_hat):
        pyro.factor("a", torch.full((x.shape[0],), value, dtype=torch.float64))

    return prog(*_xs(3))


def _fid(name, *args, **kwargs):
    import importlib

    return getattr(importlib.import_module("smcdiff.metrics.fid"), name)(*args, **kwargs)


def _frechet(s1, s2, mu1=None, method="sqrtm"):
    s1, s2 = np.asarray(s1, dtype=float), np.asarray(s2, dtype=float)
    mu1 = np.zeros(s1.shape[0]) if mu1 is None else np.asarray(mu1, dtype=float)
    return _fid("frechet_distance", mu1, s1, np.zeros(s2.shape[0]), s2, method=method)


def _folder_fid(files, key):
    calls = []

    def extractor(batch):
        calls.append(batch.shape[0])
        return batch.float().mean((2, 3))

    try:
        return _fid("fid", files[key], (np.zeros(3), np.eye(3)), extractor, batch_size=2)
    finally:
        files["calls"] = calls


def _samples(name, *args, **kwargs):
    import importlib

    return getattr(importlib.import_module("smcdiff.metrics.samples"), name)(*args, **kwargs)


def _pts(n=20, seed=0):
    return torch.randn(n, 2, generator=gen(seed), dtype=torch.float64)


def _load_edm(path):
    from smcdiff.models.pickle_loader import load_edm

    return load_edm(path)


def _small_load(path):
    from smcdiff.models.small_nets import load

    return load(path)


def _dg_load(a, b):
    from smcdiff.models.discriminator import DGDiscriminator

    return DGDiscriminator.load(a, b)


def _nets(name, *args, **kwargs):
    from smcdiff.models import small_nets

    return getattr(small_nets, name)(*args, **kwargs)


def _gmm(**kwargs):
    from smcdiff.models.gmm import GaussianMixture

    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.1, 0.1]), **kwargs)


def _data(name, *args, **kwargs):
    import smcdiff.data as D

    return getattr(D, name)(*args, **kwargs)


def _is_tensor_of(n):
    return lambda out: isinstance(out, torch.Tensor) and out.shape[0] == n


def _finite(out):
    return isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all())


FFE = "FileFormatError"

# ------------------------------------------------------------------------------------ the cases

CASES = [
    # schedules
    Case(1, "karras_sigmas(8, rho=nan)", lambda f: _sched("karras_sigmas", 8, rho=NAN),
         ("raises", ValueError, r"rho must be > 0, got nan")),
    Case(2, "karras_sigmas(8, rho=inf)", lambda f: _sched("karras_sigmas", 8, rho=INF),
         ("raises", ValueError, r"rho must be finite and > 0, got inf")),
    Case(3, "karras_sigmas(8, sigma_max=inf)", lambda f: _sched("karras_sigmas", 8, sigma_max=INF),
         ("raises", ValueError, r"sigma_max must be finite and > 0, got inf")),
    Case(4, "karras_sigmas(8, rho='7')", lambda f: _sched("karras_sigmas", 8, rho="7"),
         ("raises", TypeError, r"rho must be a real number, got str '7'")),
    Case(5, "karras_sigmas(True)", lambda f: _sched("karras_sigmas", True),
         ("raises", TypeError, r"num_steps must be an int, got bool True")),
    Case(6, "karras_sigmas(np.int64(8))", lambda f: _sched("karras_sigmas", np.int64(8)),
         ("returns", _is_tensor_of(9))),
    Case(7, "karras_sigmas(8.0)", lambda f: _sched("karras_sigmas", 8.0),
         ("raises", TypeError, r"num_steps must be an int, got float 8.0")),
    Case(8, "vp_sigmas(8, epsilon_s=nan)", lambda f: _sched("vp_sigmas", 8, epsilon_s=NAN),
         ("raises", ValueError, r"epsilon_s must be in \(0, 1\), got nan")),
    Case(9, "vp_sigmas(8, epsilon_s=2.0)", lambda f: _sched("vp_sigmas", 8, epsilon_s=2.0),
         ("raises", ValueError, r"epsilon_s must be in \(0, 1\), got 2.0")),
    Case(10, "vp_sigmas(8, beta_d=-30)", lambda f: _sched("vp_sigmas", 8, beta_d=-30),
         ("raises", ValueError, r"beta_d must be > 0, got -30.0")),
    Case(11, "ve_sigmas(8, sigma_max=inf)", lambda f: _sched("ve_sigmas", 8, sigma_max=INF),
         ("raises", ValueError, r"sigma_max must be finite and > 0")),
    Case(12, "iddpm_sigmas(8, M=0)", lambda f: _sched("iddpm_sigmas", 8, M=0),
         ("raises", ValueError, r"M must be an int >= 1, got 0")),
    Case(13, "iddpm_sigmas(8, sigma_min=1000, sigma_max=2000)",
         lambda f: _sched("iddpm_sigmas", 8, sigma_min=1000, sigma_max=2000),
         ("raises", ValueError, r"0 of the M \+ 1 = 1001 grid points lie in \[sigma_min, sigma_max\]")),
    Case(14, "iddpm_sigmas(8, C1=nan)", lambda f: _sched("iddpm_sigmas", 8, C1=NAN),
         ("raises", ValueError, r"C1 must be in \(0, 1\], got nan")),
    Case(15, "check_sigmas('abc')", lambda f: _sched("check_sigmas", "abc"),
         ("raises", TypeError, r"sigmas must be a 1-D tensor or sequence of numbers")),
    # resampling
    Case(16, "Resampler('systematic', ess_threshold=True)",
         lambda f: _resampling("Resampler", "systematic", ess_threshold=True),
         ("raises", TypeError, r"ess_threshold must be a real number, got bool True")),
    Case(17, "Resampler(ess_threshold='0.5')", lambda f: _resampling("Resampler", ess_threshold="0.5"),
         ("raises", TypeError, r"ess_threshold must be a real number, got str")),
    Case(18, "Resampler(ess_threshold=None)", lambda f: _resampling("Resampler", ess_threshold=None),
         ("raises", TypeError, r"ess_threshold must be a real number, got NoneType")),
    Case(19, "Resampler('Systematic')", lambda f: _resampling("Resampler", "Systematic").scheme.__name__,
         ("returns", lambda name: name == "systematic")),
    Case(20, "Resampler(Resampler('systematic'))",
         lambda f: _resampling("Resampler", _resampling("Resampler", "systematic")),
         ("raises", TypeError, r"got a Resampler object; pass a Resampler itself where one is expected")),
    Case(21, "Resampler(lambda lw: lw)", lambda f: _resampling("Resampler", lambda lw: lw),
         ("raises", TypeError, r"cannot be called as scheme\(log_weights, generator, num=None\)")),
    Case(22, "Resampler(<scheme returning index K>, 1)(lw, g)",
         lambda f: _custom_scheme(lambda: torch.full((2, 3), 3, dtype=torch.int64)),
         ("raises", ValueError, r"returned indices outside \[0, 2\] \(e.g. \[3, 3, 3\]\) in group\(s\) \[0, 1\]")),
    Case(23, "Resampler(<scheme returning -1>, 1)(lw, g)",
         lambda f: _custom_scheme(lambda: torch.tensor([[0, 0, -1], [0, 1, 2]])),
         ("raises", ValueError, r"returned indices outside \[0, 2\] \(e.g. \[-1\]\) in group\(s\) \[0\]")),
    Case(24, "Resampler(<scheme picking a zero-weight particle>, 1)(lw, g)",
         lambda f: _custom_scheme(lambda: torch.tensor([[0, 1, 2], [0, 1, 2]])),
         ("raises", ValueError, r"returned particles of weight zero \(log-weight -inf\) in group\(s\) \[0\]")),
    Case(25, "Resampler(<scheme returning float ancestors>, 1)(lw, g)",
         lambda f: _custom_scheme(lambda: torch.zeros(2, 3)),
         ("raises", ValueError, r"must return int64 ancestors of shape \(2, 3\), got torch.float32")),
    Case(26, "systematic(lw, g, num=True)", lambda f: _resampling("systematic", torch.zeros(2, 3), gen(), num=True),
         ("raises", TypeError, r"num \(offspring per group\) must be an int, got bool True")),
    Case(27, "systematic(lw, g, num=2.0)", lambda f: _resampling("systematic", torch.zeros(2, 3), gen(), num=2.0),
         ("raises", TypeError, r"num \(offspring per group\) must be an int, got float 2.0")),
    Case(28, "rejection(lw, g, max_rounds=1.5)",
         lambda f: _resampling("rejection", torch.zeros(2, 3), gen(), max_rounds=1.5),
         ("raises", TypeError, r"max_rounds must be an int, got float 1.5")),
    Case(29, "systematic(<NaN in group 1>, g)",
         lambda f: _resampling("systematic", torch.tensor([[0.0, 0.0], [NAN, 0.0]]), gen()),
         ("raises", ValueError, r"invalid log-weights: contain NaN in group\(s\) \[1\]")),
    Case(30, "rejection, per-group generators: group 7 at G = 8 vs G = 1 (generator state after)",
         lambda f: _rejection_group_state(),
         ("returns", lambda same: same is True)),
    # potentials
    Case(31, "DensityRatio(prob=<returns logits [2, -3, 0.5]>)", lambda f: _ratio([2.0, -3.0, 0.5]),
         ("raises", ValueError, (r"prob of 'log_ratio' returned 2 values outside \[0, 1\] \(probabilities\).*"
                                 r"logit=True.*clip_range=True"))),
    Case(32, "DensityRatio(prob=<returns 1.5>, clip_range=True)",
         lambda f: _ratio([1.5, 0.5, 0.2], clip_range=True), ("returns", _finite)),
    Case(33, "DensityRatio(prob=<returns NaN>)", lambda f: _ratio([0.5, NAN, 0.2]),
         ("raises", ValueError, r"prob of 'log_ratio' returned NaN at 1 of 3 values")),
    Case(34, "DensityRatio(log_ratio=<returns +inf>)", lambda f: _ratio([0.0, INF, 1.0], log=True),
         ("raises", ValueError, r"log_ratio of 'log_ratio' returned \+inf at 1 of 3 samples")),
    Case(35, "DensityRatio(log_ratio=<returns NaN>)", lambda f: _ratio([0.0, NAN, 1.0], log=True),
         ("raises", ValueError, r"log_ratio of 'log_ratio' returned NaN at 1 of 3 samples")),
    Case(36, "DetectorLikelihood(<detector returns logits 3.0>)", lambda f: _detector([3.0, 0.5, 0.2]),
         ("raises", ValueError, (r"detector of 'detector' returned 1 values outside \[0, 1\].*log_probs=True.*"
                                 r"clip_range=True"))),
    Case(37, "DetectorLikelihood(log_probs=True, <returns +0.5>)", lambda f: _detector([0.5, -1.0, -2.0], log_probs=True),
         ("raises", ValueError, r"outside \[-inf, 0\] \(log-probabilities\)")),
    Case(38, "DetectorLikelihood(<detector returns NaN>)", lambda f: _detector([NAN, 0.5, 0.2]),
         ("raises", ValueError, r"detector of 'detector' returned NaN")),
    Case(39, "DetectorLikelihood(log_probs=True, occurrence=1, <log p = -inf>)",
         lambda f: _detector([-INF, -1.0, -2.0], log_probs=True, occurrence=torch.tensor([1.0])),
         ("returns", _finite)),
    Case(40, "DetectorLikelihood(det, [0], prior='0.2')",
         lambda f: _weights("DetectorLikelihood")(lambda x: x, [0], prior="0.2"),
         ("raises", TypeError, r"prior must be a real number, got str '0.2'")),
    Case(41, "RewardPotential(<reward returns NaN>)", lambda f: _reward([0.0, NAN, 1.0]),
         ("raises", ValueError, r"reward of 'reward' returned NaN at 1 of 3 samples")),
    Case(42, "RewardPotential(<reward returns -inf>, lam=-1)", lambda f: _reward([0.0, -INF, 1.0], lam=-1.0),
         ("raises", ValueError, r"lam \* reward of 'reward' \(lam = -1.0\) returned \+inf at 1 of 3 samples")),
    Case(43, "RewardPotential(r, lam=np.float32(2))", lambda f: _reward([0.0, 1.0, 2.0], lam=np.float32(2)),
         ("returns", lambda out: out.tolist() == [0.0, 2.0, 4.0])),
    Case(44, "Window(V, sigma_min='a')", lambda f: _weights("Window")(lambda x, s, x0: x0[:, 0], sigma_min="a"),
         ("raises", TypeError, r"Window: sigma_min must be a real number, got str 'a'")),
    Case(45, "GaussianLikelihood(A, y=[nan, 0], R)", lambda f: _gauss(y=torch.tensor([NAN, 0.0])),
         ("raises", ValueError, r"y must be finite")),
    Case(46, "GaussianLikelihood(A, y, R, data_var=nan)", lambda f: _gauss(data_var=NAN),
         ("raises", ValueError, r"data_var must be > 0, got nan")),
    Case(47, "GaussianLikelihood(A, y, R=nan * I)", lambda f: _gauss(R=torch.full((2, 2), NAN)),
         ("raises", ValueError, r"R must be finite")),
    Case(48, "evaluate_terms(<potential returning +inf>)",
         lambda f: _weights("evaluate_terms")(lambda x, s, x0: torch.tensor([0.0, INF, 0.0]).double(), *_xs(3)),
         ("raises", ValueError, r"potential 'potential' returned \+inf in term 'potential' at 1 of 3 samples")),
    Case(49, "program with pyro.factor('a', nan)", lambda f: _program(NAN),
         ("raises", ValueError, r"potential program 'prog': Expected parameter log_factor")),
    Case(50, "program with pyro.factor('a', +inf)", lambda f: _program(INF),
         ("raises", ValueError, r"potential program 'prog' returned \+inf in term 'a' at 3 of 3 samples")),
    # FID
    Case(51, "frechet_distance(mu, -I, mu, I, method='eigh')", lambda f: _frechet(-np.eye(2), np.eye(2), method="eigh"),
         ("raises", ValueError, r"first covariance sigma is not positive semi-definite \(smallest eigenvalue -1\)")),
    Case(52, "frechet_distance(mu, [[1, 2], [0, 1]], mu, I)", lambda f: _frechet([[1.0, 2.0], [0.0, 1.0]], np.eye(2)),
         ("raises", ValueError, r"first covariance sigma is not symmetric")),
    Case(53, "frechet_distance(mu, I, mu, NaN, method='eigh')",
         lambda f: _frechet(np.eye(2), np.full((2, 2), NAN), method="eigh"),
         ("raises", ValueError, r"second statistics contain NaN or inf")),
    Case(54, "frechet_distance([nan, 0], I, mu, I)", lambda f: _frechet(np.eye(2), np.eye(2), mu1=[NAN, 0.0]),
         ("raises", ValueError, r"first statistics contain NaN or inf")),
    Case(55, "load_statistics(<corrupt .npz>)", lambda f: _fid("load_statistics", f["corrupt.npz"]),
         ("raises", ValueError, r"corrupt.npz: not FID statistics .*it looks like a damaged or truncated zip", FFE)),
    Case(56, "load_statistics(<empty file>)", lambda f: _fid("load_statistics", f["empty.npz"]),
         ("raises", ValueError, r"empty.npz: not FID statistics .*an empty file \(0 bytes\)", FFE)),
    Case(57, "load_statistics(<truncated .npz>)", lambda f: _fid("load_statistics", f["truncated.npz"]),
         ("raises", ValueError, r"truncated.npz: not FID statistics", FFE)),
    Case(58, "load_statistics(<torch.save file>)", lambda f: _fid("load_statistics", f["torch.pt"]),
         ("raises", ValueError, r"torch.pt: not FID statistics", FFE)),
    Case(59, "load_statistics(<.npz with NaN sigma>)", lambda f: _fid("load_statistics", f["nan_stats.npz"]),
         ("raises", ValueError, r"nan_stats.npz: statistics contain NaN or inf")),
    Case(60, "fid(<folder with a 0-byte PNG>, ...)", lambda f: _folder_fid(f, "zero_png_dir"),
         ("raises", ValueError, r"000002.png: not a readable PNG/JPEG image; it looks like an empty file", FFE)),
    Case(61, "fid(<folder with a truncated PNG>, ...)", lambda f: _folder_fid(f, "cut_png_dir"),
         ("raises", ValueError, r"000002.png: not a readable PNG/JPEG image", FFE)),
    Case(62, "feature_statistics(<features with NaN>)",
         lambda f: _fid("feature_statistics", np.array([[0.0, 1.0], [NAN, 1.0], [1.0, 0.0]])),
         ("raises", ValueError, r"features contain NaN or inf in 1 of 3 rows")),
    Case(63, "fid(images, ref, extractor, method='svd')",
         lambda f: _fid("fid", np.zeros((4, 8, 8, 3), np.uint8), (np.zeros(3), np.eye(3)),
                        lambda b: (_ for _ in ()).throw(AssertionError("extractor ran")), method="svd"),
         ("raises", ValueError, r"method must be 'sqrtm' or 'eigh', got 'svd'")),
    Case(64, "compute_statistics(images, extractor, batch_size=np.int64(2))",
         lambda f: _fid("compute_statistics", np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3) % 7,
                        lambda b: b.float().mean((2, 3)), batch_size=np.int64(2))[0].shape,
         ("returns", lambda shape: shape == (3,))),
    # sample metrics
    Case(65, "mmd(a, b, bandwidth=True)", lambda f: _samples("mmd", _pts(), _pts(seed=1), bandwidth=True),
         ("raises", TypeError, r"bandwidth must be a real number, got bool True")),
    Case(66, "sliced_wasserstein(a, b, g, p=inf)", lambda f: _samples("sliced_wasserstein", _pts(), _pts(seed=1), gen(), p=INF),
         ("raises", ValueError, r"p must be finite and >= 1, got inf")),
    Case(67, "precision_recall(a, b, k=np.int64(3))", lambda f: _samples("precision_recall", _pts(), _pts(seed=1), k=np.int64(3)),
         ("returns", lambda pr: 0.0 <= pr.precision <= 1.0)),
    Case(68, "unit_directions(2.5, 2, g)", lambda f: _samples("unit_directions", 2.5, 2, gen()),
         ("raises", TypeError, r"num_projections must be an int, got float 2.5")),
    # loaders
    Case(69, "load_edm(<empty file>)", lambda f: _load_edm(f["empty.pkl"]),
         ("raises", ValueError, r"empty.pkl: not an EDM network pickle .*an empty file \(0 bytes\)", FFE)),
    Case(70, "load_edm(<garbage bytes>)", lambda f: _load_edm(f["garbage.pkl"]),
         ("raises", ValueError, r"garbage.pkl: not an EDM network pickle .*unrecognised binary data", FFE)),
    Case(71, "load_edm(<truncated pickle>)", lambda f: _load_edm(f["truncated.pkl"]),
         ("raises", ValueError, r"truncated.pkl: not an EDM network pickle .*a Python pickle .*truncated", FFE)),
    Case(72, "load_edm(<torch.save zip>)", lambda f: _load_edm(f["torch.pt"]),
         ("raises", ValueError, (r"torch.pt: not an EDM network pickle .*a torch.save checkpoint \(zip archive\).*"
                                 r"small_nets.load"), FFE)),
    Case(73, "load_edm(<.npz>)", lambda f: _load_edm(f["stats.npz"]),
         ("raises", ValueError, r"stats.npz: not an EDM network pickle .*a NumPy .npz archive", FFE)),
    Case(74, "small_nets.load(<empty file>)", lambda f: _small_load(f["empty.pkl"]),
         ("raises", ValueError, r"empty.pkl: not a network saved by smcdiff.models.small_nets.save", FFE)),
    Case(75, "small_nets.load(<garbage bytes>)", lambda f: _small_load(f["garbage.pkl"]),
         ("raises", ValueError, r"garbage.pkl: not a network saved by smcdiff.models.small_nets.save", FFE)),
    Case(76, "small_nets.load(<plain pickle with globals, e.g. an EDM pickle>)", lambda f: _small_load(f["globals.pkl"]),
         ("raises", ValueError, r"globals.pkl: not a network saved by .*a Python pickle", FFE)),
    Case(77, "small_nets.load(<checkpoint whose tensors do not fit>)", lambda f: _small_load(f["misfit.pt"]),
         ("raises", ValueError, r"misfit.pt: the saved MLPDenoiser cannot be rebuilt \(RuntimeError", FFE)),
    Case(78, "DGDiscriminator.load(<garbage>, <garbage>)", lambda f: _dg_load(f["garbage.pkl"], f["garbage.pkl"]),
         ("raises", ValueError, r"garbage.pkl: not an ADM classifier checkpoint", FFE)),
    Case(79, "DGDiscriminator.load(<small_nets checkpoint>, <same>)", lambda f: _dg_load(f["misfit.pt"], f["misfit.pt"]),
         ("raises", ValueError, r"not a DG classifier \+ discriminator head pair", FFE)),
    # small networks, mixtures, data
    Case(80, "MLPDenoiser(2.5)", lambda f: _nets("MLPDenoiser", 2.5),
         ("raises", TypeError, r"MLPDenoiser: dim must be an int, got float 2.5")),
    Case(81, "MLPDenoiser(2, hidden=True)", lambda f: _nets("MLPDenoiser", 2, hidden=True),
         ("raises", TypeError, r"MLPDenoiser: hidden must be an int, got bool True")),
    Case(82, "TimeDiscriminator((2,), feature_dim=0, features=f)",
         lambda f: _nets("TimeDiscriminator", (2,), features=lambda x, t: x, feature_dim=0),
         ("raises", ValueError, r"TimeDiscriminator: feature_dim must be an int >= 1, got 0")),
    Case(83, "GaussianMixture(w, mu, var, dtype=torch.int64)", lambda f: _gmm(dtype=torch.int64),
         ("raises", TypeError, r"dtype must be a floating torch.dtype")),
    Case(84, "gmm.condition(A, y=[nan], R)", lambda f: _gmm().condition(torch.ones(1, 1), torch.tensor([NAN]), 0.1),
         ("raises", ValueError, r"A and y must be finite")),
    Case(85, "load_digits(holdout='0.2')", lambda f: _data("load_digits", holdout="0.2"),
         ("raises", TypeError, r"holdout must be a real number, got str '0.2'")),
    Case(86, "load_digits(seed=1.5)", lambda f: _data("load_digits", seed=1.5),
         ("raises", TypeError, r"seed must be an int, got float 1.5")),
    Case(87, "two_moons(10, g, noise=True)", lambda f: _data("two_moons", 10, gen(), noise=True),
         ("raises", TypeError, r"noise must be a real number, got bool True")),
    Case(88, "to_uint8(<image with NaN>)", lambda f: _data("to_uint8", torch.tensor([0.0, NAN])),
         ("raises", ValueError, r"to_uint8: the images contain NaN at 1 of 2 values")),
    Case(89, "known_mixture(component_var='0.1')", lambda f: _data("known_mixture", component_var="0.1"),
         ("raises", TypeError, r"component_var must be a real number, got str '0.1'")),
    Case(90, "DigitsFeatures(DigitsClassifier(), batch_size=0)",
         lambda f: _digits_features(0),
         ("raises", ValueError, r"batch_size must be an int >= 1, got 0")),
]


def _rejection_group_state() -> bool:
    """Whether group 7's generator ends in the same state after one rejection call at G = 8 and alone."""
    from smcdiff.resampling import rejection

    lw = torch.randn(8, 30, generator=gen(3), dtype=torch.float64) * torch.linspace(0, 4, 8, dtype=torch.float64)[:, None]
    many = [gen(100 + g) for g in range(8)]
    rejection(lw, many)
    alone = [gen(107)]
    rejection(lw[7:], alone)
    return bool(torch.equal(many[7].get_state(), alone[0].get_state()))


def _digits_features(batch_size):
    from smcdiff.metrics.fd_digits import DigitsFeatures
    from smcdiff.models.small_nets import DigitsClassifier

    return DigitsFeatures(DigitsClassifier(width=4, feature_dim=4), batch_size=batch_size)


# ------------------------------------------------------------------------------------ bad files


def make_files(folder: Path) -> dict:
    """The bad files of the table, written with numpy / torch / PIL only (no smcdiff)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files: dict = {}

    def put(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        files[name] = folder / name

    buf = io.BytesIO()
    np.savez(buf, mu=np.zeros(3), sigma=np.eye(3))
    npz = buf.getvalue()
    put("stats.npz", npz)
    put("corrupt.npz", npz[:4] + bytes(range(256)) * 4)
    put("truncated.npz", npz[: len(npz) // 2])
    put("empty.npz", b"")
    put("empty.pkl", b"")
    put("garbage.pkl", bytes(range(7, 200)) * 5)
    put("truncated.pkl", pickle.dumps({"ema": list(range(50))}, protocol=4)[:40])
    put("globals.pkl", pickle.dumps({"ema": functools.partial(print, 1)}, protocol=4))
    buf = io.BytesIO()
    np.savez(buf, mu=np.zeros(3), sigma=np.full((3, 3), np.nan))
    put("nan_stats.npz", buf.getvalue())
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    put("torch.pt", buf.getvalue())
    buf = io.BytesIO()
    torch.save({"config": {"class": "MLPDenoiser", "kwargs": {"dim": 2, "hidden": 8, "depth": 1, "sigma_data": 0.5}},
                "state_dict": {"inp.weight": torch.zeros(1)}}, buf)
    put("misfit.pt", buf.getvalue())
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    for key, bad in (("zero_png_dir", b""), ("cut_png_dir", png.getvalue()[:30])):
        d = folder / key
        d.mkdir()
        for i in range(2):
            (d / f"{i:06d}.png").write_bytes(png.getvalue())
        (d / "000002.png").write_bytes(bad)
        files[key] = d
    return files


# ------------------------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad_files"))


def test_cases_are_numbered_in_order():
    assert [c.id for c in CASES] == list(range(1, len(CASES) + 1))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.id:02d}")
def test_bad_input(case, files):
    if case.expect[0] == "raises":
        _, exc, pattern, *name = case.expect
        with pytest.raises(exc, match=pattern) as info:
            case.run(dict(files))
        if name:
            assert type(info.value).__name__ == name[0]
    else:
        assert case.expect[1](case.run(dict(files))), case.call


def test_fid_names_the_bad_image_before_running_on_it(files):
    # Row 60: the extractor sees only whole batches read before the bad file.
    scratch = dict(files)
    with pytest.raises(ValueError, match=re.escape("000002.png")):
        _folder_fid(scratch, "zero_png_dir")
    assert scratch["calls"] == [2]
