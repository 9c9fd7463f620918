"""The composed DG discriminator against the reference (fixtures README §3, tolerances §5), and
end-to-end runs of smcdiff's DG and particle filter with it as ``log_ratio``."""


import pytest
import torch

import smcdiff
import smcdiff.methods
from smcdiff.kernels.guidance import log_ratio_grad
from smcdiff.models.discriminator import DGDiscriminator, cosine_time, vp_tau_alpha
from smcdiff.weights.ratio import log_ratio_from_prob

from tests.paths import FIXTURES  # noqa: E402
if not (FIXTURES / "dg_discriminator_32_uncond.pt").is_file():
    pytest.skip(f"DG parity fixtures not found under {FIXTURES}", allow_module_level=True)

CASES = ["dg_discriminator_32_uncond.pt", "dg_discriminator_32_cond.pt", "dg_discriminator_64_uncond.pt"]
ELL_TOL, G_ATOL, G_RTOL, FEATURES_TOL, CLIP_RTOL = 1e-5, 5e-6, 1e-5, 5e-5, 1e-4  # fixtures README §5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _load(name):
    return torch.load(FIXTURES / name, weights_only=True)


def _build(d, head_overrides=None):
    c = _load(d["classifier_fixture"])
    head_sd = d["head_state_dict"] if "head_state_dict" in d else _load(d["head_fixture"])["head_state_dict"]
    head_sd = {**head_sd, **(head_overrides or {})}
    cfg = d["classifier_config"]
    return DGDiscriminator.from_state_dicts(
        c["state_dict"], head_sd, img_resolution=d["img_resolution"], classifier_depth=cfg["classifier_depth"],
        attention_resolutions=cfg["classifier_attention_resolutions"], time_min=d["time_min"],
        time_max=d["time_max"], clip=d["clip_eps"])


@pytest.fixture(scope="module", params=CASES)
def case(request):
    d = _load(request.param)
    return d, _build(d)


def _close(a, b, atol, rtol=0.0):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a.double() - b.double()).abs()
    assert bool((err <= atol + rtol * b.double().abs()).all()), f"max |Δ| = {err.max().item():.3g}"


def _vp_grad(disc, d):
    """g = ∂Σℓ/∂x_vp and ℓ, from the stored x_vp construction."""
    _, alpha, t_model = disc.times(d["sigma"], d["x"])
    x_vp = (alpha[:, None, None, None] * d["x"]).float().requires_grad_(True)
    ell = log_ratio_from_prob(torch.sigmoid(disc.vp_logit(x_vp, t_model, d.get("class_labels"))), disc.clip)
    (g,) = torch.autograd.grad(ell.sum(), x_vp)
    return g, ell


def test_time_conversion(case):
    d, disc = case
    sigma, alpha, t_model = disc.times(d["sigma"], d["x"])
    tau = vp_tau_alpha(sigma)[0]
    assert tau.dtype == alpha.dtype == t_model.dtype == torch.float32
    _close(tau, d["tau"], 0.0, 1e-6)
    _close(alpha, d["alpha"], 0.0, 1e-6)
    _close(t_model, d["tau_model"], 0.0, 1e-6)
    assert torch.equal(t_model, cosine_time(alpha) if d["img_resolution"] == 64 else tau)


def test_features_logit_probability(case):
    d, disc = case
    _, alpha, t_model = disc.times(d["sigma"], d["x"])
    y = d.get("class_labels")
    with torch.no_grad():
        features = disc.classifier((alpha[:, None, None, None] * d["x"]).float(), t_model, feature=True)
        logit, prob = disc.logit(d["x"], d["sigma"], y), disc.prob(d["x"], d["sigma"], y)
        ratio = disc.ratio_pf(d["x"], d["sigma"], y)
    _close(features, d["features"], FEATURES_TOL)
    _close(logit, d["head_logit"], ELL_TOL)
    _close(prob, d["d"], 1e-6)
    _close(ratio, d["pf_likelihood_ratio"], 0.0, ELL_TOL)


def test_log_ratio_and_gradients(case):
    d, disc = case
    y = d.get("class_labels")
    x = d["x"].clone().requires_grad_(True)
    ell = disc(x, d["sigma"], class_labels=y)  # the log_ratio contract: callable, (N,)
    assert ell.shape == (x.shape[0],) and ell.dtype == torch.float32
    _close(ell, d["log_ratio"], ELL_TOL)
    (grad_x,) = torch.autograd.grad(ell.sum(), x)
    _close(grad_x, d["grad_log_ratio_x"], G_ATOL, G_RTOL)
    g, _ = _vp_grad(disc, d)
    _close(g, d["grad_log_ratio_xvp"], G_ATOL, G_RTOL)


def test_guidance_term(case):
    d, disc = case
    G, ell = disc.guidance(d["x"], d["sigma"], d.get("class_labels"))
    assert G.dtype == torch.float32 and not G.requires_grad
    _close(G, d["guidance"], G_ATOL, G_RTOL)
    _close(ell, d["log_ratio"], ELL_TOL)
    # smcdiff's DiscriminatorGuidance adds σ²∇ₓℓ to D, i.e. −G.
    grad, _ = log_ratio_grad(disc, d["x"], d["sigma"].double(), {"class_labels": d.get("class_labels")})
    _close(d["sigma"].double()[:, None, None, None] ** 2 * grad, -d["guidance"], G_ATOL, G_RTOL)


def test_batch_time_window(case):
    d, disc = case
    w = d["window"]
    G, ell = disc.guidance(d["x"], w["sigma"], d.get("class_labels"))
    assert w["guidance_all_zero"] and bool((G == 0).all()) and G.shape == d["x"].shape
    assert torch.equal(ell, w["log_ratio"])


def test_clip_case():
    d = _load("dg_discriminator_32_uncond.pt")
    cc = d["clip_case"]
    disc = _build(d, head_overrides=cc["head_overrides"])
    with torch.no_grad():
        _close(disc.logit(d["x"], d["sigma"]), cc["head_logit"], 0.0, CLIP_RTOL)
        _close(disc.prob(d["x"], d["sigma"]), cc["d"], 0.0, CLIP_RTOL)
    G, ell = disc.guidance(d["x"], d["sigma"])
    _close(ell, cc["log_ratio"], 0.0, CLIP_RTOL)
    _close(G, cc["guidance"], CLIP_RTOL * cc["guidance"].abs().max().item())
    g, _ = _vp_grad(disc, d)
    _close(g, cc["grad_log_ratio_xvp"], CLIP_RTOL * cc["grad_log_ratio_xvp"].abs().max().item())
    # Samples 0 and 1 are clipped: float32 ℓ values exactly, and exactly zero gradient.
    assert ell[:2].tolist() == cc["log_ratio"][:2].tolist()
    assert abs(ell[0].item() - 11.511559) < 1e-6 and abs(ell[1].item() + 11.512916) < 1e-6
    assert bool((G[:2] == 0).all()) and bool((g[:2] == 0).all()) and bool((G[2:] != 0).any())


def test_conditioning_rules():
    d = _load("dg_discriminator_32_cond.pt")
    disc = _build(d)
    x, s, y = d["x"][:3], d["sigma"][:3], d["class_labels"][:3]
    with torch.no_grad():
        assert torch.equal(disc.logit(x, s, y), disc.logit(x, s, y.argmax(1)))
    with pytest.raises(ValueError, match="class-conditional"):
        disc(x, s)
    unc = _build(_load("dg_discriminator_32_uncond.pt"))
    with torch.no_grad():  # an unconditional head ignores labels
        assert torch.equal(unc(x, s, class_labels=y), unc(x, s))


def test_scalar_sigma_broadcast_and_freezing():
    d = _load("dg_discriminator_32_uncond.pt")
    disc = _build(d)
    x = d["x"][:2]
    with torch.no_grad():
        assert torch.equal(disc(x, 0.5), disc(x, torch.tensor([0.5, 0.5], dtype=torch.float64)))
    with pytest.raises(ValueError, match="one value per sample"):
        disc(x, torch.ones(3))
    assert not any(p.requires_grad for p in disc.parameters()) and not disc.training
    assert not disc(x, 0.5).requires_grad  # no graph over the frozen weights


def test_load_from_files(tmp_path):
    d = _load("dg_discriminator_32_cond.pt")
    c = _load(d["classifier_fixture"])
    torch.save(c["state_dict"], tmp_path / "clf.pt")
    torch.save(d["head_state_dict"], tmp_path / "head.pt")
    disc = DGDiscriminator.load(tmp_path / "clf.pt", tmp_path / "head.pt", classifier_depth=1, attention_resolutions="16,8")
    assert disc.head.condition and disc.classifier.out_channels == 10 and disc.clip == 1e-5
    with torch.no_grad():
        _close(disc.logit(d["x"], d["sigma"], d["class_labels"]), d["head_logit"], ELL_TOL)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        DGDiscriminator.load(tmp_path / "missing.pt", tmp_path / "head.pt")


def _toy_denoiser(x, sigma, **cond):
    return x * 0.25 / (0.25 + sigma.view(-1, 1, 1, 1) ** 2)


def test_dg_method_end_to_end():
    disc = _build(_load("dg_discriminator_32_uncond.pt"))
    sigmas = smcdiff.karras_sigmas(3)  # 80, 2.5, 0.002: DG is on at the first two steps only
    kw = {"num_samples": 2, "shape": (3, 32, 32), "w1": 1.0}
    res = smcdiff.methods.dg(_toy_denoiser, sigmas, log_ratio=disc, generator=torch.Generator().manual_seed(0), **kw)
    base = smcdiff.methods.dg(_toy_denoiser, sigmas, log_ratio=None, generator=torch.Generator().manual_seed(0), **kw)
    assert res.x.shape == (2, 3, 32, 32) and bool(torch.isfinite(res.x).all())
    assert res.nfe == 5.0 and res.disc_calls == 2.0 and base.disc_calls == 0.0
    assert not torch.equal(res.x, base.x)
    assert res.diagnostics["log_ratio"].shape == (2,)


def test_particle_filter_end_to_end():
    disc = _build(_load("dg_discriminator_32_uncond.pt"))
    res = smcdiff.methods.particle_filter(
        _toy_denoiser, smcdiff.karras_sigmas(3), log_ratio=disc, num_samples=1, shape=(3, 32, 32),
        generator=torch.Generator().manual_seed(0), num_particles=2, resample_at=(1,))
    assert res.x.shape == (1, 3, 32, 32) and res.particles.shape == (1, 2, 3, 32, 32)
    assert res.disc_calls == 2 * (1 + 1)  # K × (events + final)
    assert bool(torch.isfinite(res.log_weights).all())
