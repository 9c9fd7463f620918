"""One engine: stepping equals running, every method's result exports and plots, the combination of
DG + particle filter + rejection control is consistent, and the package keeps its layers."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import smcdiff
from smcdiff import engine
from smcdiff.diagnostics import plot, summary
from smcdiff.engine import RejectionControl, SMCFailedError
from smcdiff.kernels import CorrectedEulerMaruyama, DiscriminatorGuidance, EDMHeun, EulerMaruyama, karras_sigmas
from smcdiff.methods import registry
from smcdiff.methods.particle_filtering import LogRatioPotential
from smcdiff.models.pairs import mixture_pair_1d, mixture_pair_2d
from smcdiff.resampling import Resampler
from smcdiff.sampling import DiffusionModel

PACKAGE = Path(smcdiff.__file__).parent


def gen(seed):
    return torch.Generator().manual_seed(seed)


class RandomWalk:
    num_steps = 6

    def init(self, G, K, generator):
        return torch.zeros(G, K, dtype=torch.float64)

    def move(self, t, x, generator):
        return x + torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def log_potential(self, t, x_prev, x):
        return -0.5 * (x - 1.0) ** 2


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("which", ["random_walk", "diffusion"])
def test_stepping_by_hand_equals_run_bit_for_bit(which):
    resampler = Resampler("systematic", 0.7)
    if which == "random_walk":
        model = RandomWalk()
    else:
        _, m, ell = mixture_pair_1d()
        model = DiffusionModel(m.denoise, karras_sigmas(8), EDMHeun(S_churn=5, resample_gamma=0.3),
                               LogRatioPotential(ell, 1e-4), shape=(1,))
    ran = engine.run(model, 3, 16, resampler, gen(4))
    state = engine.init(model, 3, 16, gen(4))
    infos = []
    for t in range(model.num_steps):
        state, info = engine.step(model, state, t, resampler)
        infos.append(info)
    stepped = engine.stack_records(state, infos)
    _assert_same(ran.x, stepped.x)
    for name in ("log_weights", "log_evidence", "ess", "resampled", "ancestors", "log_evidence_increments"):
        assert torch.equal(getattr(ran, name), getattr(stepped, name)), name
    assert ran.resampled.any()  # the run did resample, so the comparison covers it


def test_a_run_can_stop_early_and_its_state_is_immutable():
    state = engine.init(RandomWalk(), 2, 8, gen(0))
    new, info = engine.step(RandomWalk(), state, 0, None)
    assert torch.equal(state.x, torch.zeros(2, 8, dtype=torch.float64))  # the old state is untouched
    assert not torch.equal(new.x, state.x) and info.t == 0 and info.log_evidence.shape == (2,)
    with pytest.raises(AttributeError):
        new.x = None


def _method_calls():
    _, model, ell = mixture_pair_1d()
    common = dict(num_samples=3, shape=(1,), generator=gen(1))
    sig = karras_sigmas(8)
    return {
        "edm": lambda: registry.method("edm")(model.denoise, sig, **common),
        "dg": lambda: registry.method("dg")(model.denoise, sig, log_ratio=ell, boosting=True, S_churn=1.0, **common),
        "sedm": lambda: registry.method("sedm")(model.denoise, sig, log_ratio=ell, **common),
        "diffrs": lambda: registry.method("diffrs")(model.denoise, sig, log_ratio=ell, rej_percentile=0.9, **common),
        "pf": lambda: registry.method("pf")(model.denoise, karras_sigmas(12), log_ratio=ell, num_particles=4,
                                            S_churn=2.0, **common),
        "pf-restart": lambda: registry.method("pf")(model.denoise, karras_sigmas(18), log_ratio=ell,
                                                    num_particles=3, sampler="restart", select="weighted", **common),
        "restart": lambda: registry.method("restart")(model.denoise, karras_sigmas(18), **common),
        "d-select": lambda: registry.method("d-select")(model.denoise, sig, log_ratio=ell, num_particles=3, **common),
        "best-of-n": lambda: registry.method("best-of-n")(model.denoise, sig, score=lambda x: -x[:, 0] ** 2,
                                                          num_particles=3, **common),
    }


@pytest.mark.parametrize("name", list(_method_calls()))
def test_every_method_result_exports_to_arviz_plots_and_summarises(name, tmp_path):
    import arviz as az

    res = _method_calls()[name]()
    assert isinstance(res, smcdiff.Result) and res.x.shape == (3, 1)
    assert res.particles.shape[0] == 3 and res.nfe > 0
    idata = res.to_arviz()
    path = tmp_path / f"{name}.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert back.posterior["x"].shape[:2] == (3, res.particles.shape[1])
    assert back.smc_diagnostics["ess"].shape == tuple(res.ess.shape)
    plot(res, tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert "groups" in summary(res)


def test_the_registry_is_what_the_front_ends_read():
    from smcdiff.apps import compare, generate, table

    assert set(generate.METHODS) <= set(registry.METHODS)
    cfg = table.TableConfig.quick()
    assert all(spec.fn in registry.METHODS.values() for spec in table.method_specs(cfg))
    assert all(fn in registry.METHODS.values() for _, _, fn, _ in compare._runs(4, 18))
    with pytest.raises(ValueError, match="unknown method"):
        registry.method("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.METHODS["dg"])


def test_the_combination_of_dg_particle_filter_and_rejection_control_recovers_the_data():
    # DG-guided Euler–Maruyama with its importance correction + resampling on the exact log-ratio
    # potential + rejection control: targets p_EM(x)·q(x)/p(x) ≈ the data mixture q. Per group the
    # self-normalised estimate of the component weights; the groups are independent, so their mean
    # has standard error sd/√G. Tolerance: 5 standard errors + 0.02 for the EM discretisation bias
    # at 64 steps (the unguided particle filter on the same potential shows a bias of that size).
    data, model, ell = mixture_pair_2d()
    G, K = 32, 64
    res = smcdiff.sample(model.denoise, karras_sigmas(64), CorrectedEulerMaruyama(DiscriminatorGuidance(ell, w1=1.0)),
                         LogRatioPotential(ell, 1e-4), Resampler("systematic", 0.5), G, K, (2,), gen(0),
                         rejection_control=RejectionControl(quantile=0.5))
    resp = data.responsibilities(res.x.reshape(-1, 2)).reshape(G, K, -1)
    est = (res.weights[..., None] * resp).sum(1)
    se = est.std(0) / math.sqrt(G)
    assert torch.all((est.mean(0) - data.weights).abs() < 5 * se + 0.02), (est.mean(0), se)
    # the model alone is far off (0.2/0.3/0.5), so the test can fail
    assert (model.weights - data.weights).abs().max() > 0.3
    assert res.accept_rate is not None and res.resampled.any()


def test_a_nan_from_the_denoiser_names_the_step_and_the_source():
    def broken(x, sigma):
        return torch.where(sigma[:, None] < 1.0, torch.full_like(x, math.nan), x / (1 + sigma[:, None] ** 2))

    with pytest.raises(SMCFailedError, match=r"denoiser .* at step \d+"):
        smcdiff.sample(broken, karras_sigmas(8), EulerMaruyama(), num_groups=2, num_particles=3, shape=(1,),
                       generator=gen(0))


def test_sampling_records_no_autograd_graph():
    net = torch.nn.Linear(2, 2).double()
    res = smcdiff.sample(lambda x, sigma: net(x), karras_sigmas(4), EDMHeun(), num_particles=4, shape=(2,),
                         generator=gen(0))
    assert not res.x.requires_grad


# ----------------------------------------------------------------------------- the package's shape

LAYERS = {  # module prefix -> layer; a module may import only from layers <= its own
    "smcdiff._rng": 0, "smcdiff.types": 0, "smcdiff.checks": 0, "smcdiff.errors": 0, "smcdiff.log_weights": 1,
    "smcdiff.resampling_schemes": 1, "smcdiff.resampling": 1, "smcdiff.engine": 2,
    "smcdiff.kernels": 3, "smcdiff.weights": 3, "smcdiff.results": 4, "smcdiff.sampling": 4,
    "smcdiff.likelihood": 5, "smcdiff.models": 5, "smcdiff.data": 6, "smcdiff.methods": 7,
    "smcdiff.metrics": 8, "smcdiff.diagnostics": 8, "smcdiff.assets": 0, "smcdiff.apps": 9, "smcdiff": 10,
}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path, ast.parse(path.read_text())


def test_layers_import_only_downward_and_nothing_imports_private_names_across_modules():
    bad = []
    for name, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smcdiff"):
                # `from smcdiff import engine` imports the module smcdiff.engine
                targets = [f"smcdiff.{a.name}" for a in node.names] if node.module == "smcdiff" else [node.module]
                for target in targets:
                    if _layer(target) > _layer(name) and name != "smcdiff":
                        bad.append(f"{name} imports {target} (upward)")
                for alias in node.names:  # private helpers (not private modules such as _rng)
                    if alias.name.startswith("_") and node.module != "smcdiff":
                        bad.append(f"{name} imports private {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("smcdiff") and _layer(alias.name) > _layer(name) and name != "smcdiff":
                        bad.append(f"{name} imports {alias.name} (upward)")
    assert not bad, "\n".join(bad)


def test_modules_stay_short_and_no_function_shadows_its_module():
    long = [f"{p.relative_to(PACKAGE)}: {n}" for _, p, _ in _modules() if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long
    import importlib
    import pkgutil

    shadowed = []
    for pkg_name in ("smcdiff", "smcdiff.methods", "smcdiff.diagnostics", "smcdiff.kernels", "smcdiff.engine"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            attr = getattr(pkg, info.name, None)
            if attr is not None and not isinstance(attr, type(pkg)):
                shadowed.append(f"{pkg_name}.{info.name}")
    assert not shadowed, shadowed


def test_a_nan_log_ratio_in_guidance_names_the_guidance():
    _, model, _ = mixture_pair_1d()

    def nan_ratio(x, sigma):
        return torch.full((x.shape[0],), math.nan, dtype=torch.float64) + 0 * x.sum(1)

    with pytest.raises(SMCFailedError, match="guidance term .* at step 0"):
        smcdiff.methods.dg(model.denoise, karras_sigmas(8), log_ratio=nan_ratio, num_samples=2, shape=(1,),
                           generator=gen(0))


def test_a_log_ratio_without_a_gradient_path_is_refused_not_silently_zero():
    _, model, ell = mixture_pair_1d()

    def frozen(x, sigma):
        with torch.no_grad():
            return ell(x, sigma)

    with pytest.raises(ValueError, match="no gradient path"):
        smcdiff.methods.dg(model.denoise, karras_sigmas(8), log_ratio=frozen, num_samples=2, shape=(1,),
                           generator=gen(0))


def test_the_final_choices():
    _, model, ell = mixture_pair_1d()
    def run(final):  # the same run (seed 2) with each final choice
        return smcdiff.sample(model.denoise, karras_sigmas(8), EDMHeun(S_churn=2.0), LogRatioPotential(ell, 1e-4),
                              Resampler("systematic", 0.5), 3, 32, (1,), gen(2), final=final)

    every, again, best, drawn = run("all"), run("resample"), run("argmax"), run("weighted")
    assert torch.equal(every.x, every.particles) and every.selected is None
    # resample: K equally weighted copies of the weighted particles, the evidence unchanged
    assert again.x.shape == (3, 32, 1) and torch.equal(again.particles, every.particles)
    assert torch.allclose(again.log_weights, again.log_weights[:, :1].expand(3, 32))
    torch.testing.assert_close(torch.logsumexp(again.log_weights, 1), torch.logsumexp(every.log_weights, 1))
    assert all(bool((again.x[g, :, None] == every.particles[g][None]).all(-1).any(-1).all()) for g in range(3))
    # argmax: the particle with the largest final potential; weighted: some particle of the group
    assert torch.equal(best.selected, every.potential.argmax(1)) and torch.equal(best.x, every.particles[torch.arange(3), best.selected])
    assert drawn.x.shape == (3, 1) and torch.equal(drawn.x, every.particles[torch.arange(3), drawn.selected])


def test_guidance_around_restart_binds_to_the_grid_each_step_runs_on():
    from smcdiff.kernels import Guided, Restart

    seen = []

    class Probe:  # a transform that records what it is bound to
        def bind(self, denoiser, sigmas, i):
            seen.append((float(sigmas[i]), float(sigmas[i + 1])))
            return denoiser

    _, model, _ = mixture_pair_1d()
    kernel = Restart()
    res = smcdiff.sample(model.denoise, karras_sigmas(18), Guided(kernel, Probe()), num_particles=2, shape=(1,),
                         generator=gen(0))
    levels = res.sigmas.tolist()
    assert len(seen) == kernel.num_steps(karras_sigmas(18))
    for t, (hi, lo) in enumerate(seen):  # each bound step ends where the run's step t ends
        assert lo == levels[t + 1]
