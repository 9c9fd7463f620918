"""smcdiff.diagnostics: ArviZ layout and values, NetCDF round trip, plots, summary, bad input."""

import dataclasses
import doctest
import tempfile
import types

import numpy as np
import pytest
import torch

import smcdiff
from smcdiff import diagnostics, engine
from smcdiff.diagnostics import plot, summary, to_arviz
from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.models import GaussianMixture
from smcdiff.resampling import Resampler

# ArviZ 0.23 warns on its first import of the day; its message starts with a newline, which the
# pyproject filter ("ignore:ArviZ is undergoing...") does not match. Filter exactly that message.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
G, K, T = 3, 16, 6


def mixture():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.5]), means, torch.tensor([0.2, 0.3]))


def run(num_groups=G, num_particles=K, num_steps=T, potential=True, resampler=True, seed=0):
    return smcdiff.sample(
        mixture().denoise, karras_sigmas(num_steps), EDMHeun(S_churn=5),
        potential=(lambda x, s, x0: -0.5 * (x0**2).sum(-1)) if potential else None,
        resampler=Resampler("systematic", 0.9) if resampler else None,
        num_groups=num_groups, num_particles=num_particles, shape=(2,),
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.fixture(scope="module")
def result():
    res = run()
    assert res.resampled.any() and not res.resampled.all()  # the test exercises both cases
    return res


def test_layout_and_values(result):
    idata = to_arviz(result)
    assert set(idata.groups()) == {"posterior", "sample_stats", "log_likelihood", "smc_diagnostics"}

    x = idata.posterior["x"]
    assert x.dims == ("chain", "draw", "x_dim_0") and x.shape == (G, K, 2)
    np.testing.assert_array_equal(x.values, result.x.numpy())
    np.testing.assert_array_equal(idata.posterior.chain.values, np.arange(G))
    np.testing.assert_array_equal(idata.posterior.draw.values, np.arange(K))

    ss = idata.sample_stats
    assert ss["log_weight"].dims == ("chain", "draw")
    np.testing.assert_array_equal(ss["log_weight"].values, result.log_weights.numpy())
    assert ss["log_marginal_likelihood"].dims == ("chain",)
    np.testing.assert_array_equal(ss["log_marginal_likelihood"].values, result.log_evidence.numpy())

    assert list(idata.log_likelihood.data_vars) == ["potential"]
    assert idata.log_likelihood["potential"].dims == ("chain", "draw")
    np.testing.assert_array_equal(idata.log_likelihood["potential"].values, result.potential.numpy())

    d = idata.smc_diagnostics
    assert set(d.data_vars) == {"ess", "log_evidence_increment", "resampled", "sigma", "ancestors"}
    assert dict(d.sizes) == {"step": T, "chain": G, "draw": K}
    for name in ("ess", "log_evidence_increment", "resampled"):
        assert d[name].dims == ("step", "chain")
    assert d["sigma"].dims == ("step",)
    assert d["ancestors"].dims == ("step", "chain", "draw")
    np.testing.assert_array_equal(d["ess"].values, result.ess.numpy())
    np.testing.assert_array_equal(d["log_evidence_increment"].values, result.log_evidence_increments.numpy())
    assert d["resampled"].dtype == np.int8
    np.testing.assert_array_equal(d["resampled"].values.astype(bool), result.resampled.numpy())
    np.testing.assert_array_equal(d["sigma"].values, result.sigmas[1:].numpy())
    assert d["sigma"].values[-1] == 0.0
    np.testing.assert_array_equal(d["ancestors"].values, result.ancestors.numpy())

    # the increments sum to the run's log-evidence
    np.testing.assert_allclose(d["log_evidence_increment"].sum("step").values,
                               ss["log_marginal_likelihood"].values, rtol=0, atol=1e-12)
    assert idata.attrs["created_by"] == f"smcdiff {smcdiff.__version__}"
    assert (idata.attrs["num_groups"], idata.attrs["num_particles"], idata.attrs["num_steps"]) == (G, K, T)
    assert idata.attrs["nfe"] == result.nfe
    for group in idata.groups():
        assert idata[group].attrs["created_by"] == f"smcdiff {smcdiff.__version__}"
        assert idata[group].attrs["inference_library"] == "smcdiff"


def test_result_method_and_copies(result):
    idata = result.to_arviz()  # SMCResult.to_arviz delegates here
    np.testing.assert_array_equal(idata.sample_stats["log_weight"].values, result.log_weights.numpy())
    idata.posterior["x"].values[:] = 1e9
    assert not (result.x == 1e9).any()


def test_netcdf_round_trip(result, tmp_path):
    import arviz as az

    idata = to_arviz(result)
    path = tmp_path / "run.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        assert set(back[group].data_vars) == set(idata[group].data_vars)
        for name, var in idata[group].data_vars.items():
            got = back[group][name]
            assert got.dims == var.dims
            assert got.dtype == var.dtype, (group, name)
            np.testing.assert_array_equal(got.values, var.values)
        for coord in idata[group].coords:
            np.testing.assert_array_equal(back[group][coord].values, idata[group][coord].values)
        assert back[group].attrs["created_by"] == idata[group].attrs["created_by"]
        back[group].close()
    assert back.smc_diagnostics["resampled"].dtype == np.int8  # NetCDF has no bool: int8 flags
    np.testing.assert_array_equal(back.smc_diagnostics["resampled"].values.astype(bool), result.resampled.numpy())
    np.testing.assert_array_equal(back.sample_stats["log_marginal_likelihood"].values, result.log_evidence.numpy())
    assert back.attrs["created_by"] == idata.attrs["created_by"]
    assert int(back.attrs["num_particles"]) == K


class TwoTerms:
    """A potential with named terms (``terms`` → name: (N,)), as sample() records them."""

    def terms(self, x, sigma, x0_hat, **cond):
        return {"prior": -0.5 * (x0_hat**2).sum(-1), "likelihood": -0.5 * (x0_hat[:, 0] - 1.0) ** 2}

    def __call__(self, x, sigma, x0_hat, **cond):
        return sum(self.terms(x, sigma, x0_hat).values())


def test_named_potentials_and_accept_rate_of_a_real_run(tmp_path):
    import arviz as az

    res = smcdiff.sample(mixture().denoise, karras_sigmas(T), EDMHeun(S_churn=5), potential=TwoTerms(),
                         resampler=Resampler("systematic", 0.9), num_groups=G, num_particles=K, shape=(2,),
                         rejection_control=engine.RejectionControl(quantile=0.0),  # c = min weight: cheap
                         generator=torch.Generator().manual_seed(2))
    assert set(res.named_potentials) == {"prior", "likelihood"} and res.accept_rate.shape == (T, G)
    idata = to_arviz(res)
    assert set(idata.log_likelihood.data_vars) == {"prior", "likelihood"}  # named terms replace "potential"
    for name, value in res.named_potentials.items():
        assert idata.log_likelihood[name].dims == ("chain", "draw")
        np.testing.assert_array_equal(idata.log_likelihood[name].values, value.numpy())
    assert idata.smc_diagnostics["accept_rate"].dims == ("step", "chain")
    np.testing.assert_array_equal(idata.smc_diagnostics["accept_rate"].values, res.accept_rate.numpy())
    assert "accept rate" in summary(res)
    idata.to_netcdf(str(tmp_path / "rc.nc"))
    back = az.from_netcdf(str(tmp_path / "rc.nc"))
    np.testing.assert_array_equal(back.smc_diagnostics["accept_rate"].values, res.accept_rate.numpy())
    np.testing.assert_array_equal(back.log_likelihood["prior"].values, res.named_potentials["prior"].numpy())
    for group in back.groups():
        back[group].close()


def test_optional_fields_absent(result):
    # empty named potentials and accept_rate=None: back to ``potential``, no accept_rate
    idata = to_arviz(dataclasses.replace(result, named_potentials={}, accept_rate=None))
    assert list(idata.log_likelihood.data_vars) == ["potential"]
    assert "accept_rate" not in idata.smc_diagnostics
    # duck typing: an object without the optional attributes at all
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    for name in ("named_potentials", "accept_rate", "potential", "sigmas", "nfe", "nfe_total"):
        fields.pop(name)
    idata = to_arviz(types.SimpleNamespace(**fields))
    assert set(idata.groups()) == {"posterior", "sample_stats", "smc_diagnostics"}
    assert set(idata.smc_diagnostics.data_vars) == {"ess", "log_evidence_increment", "resampled", "ancestors"}


def test_no_potential_no_resampling_exports_and_plots(tmp_path):
    res = run(potential=False, resampler=False)
    assert not res.resampled.any()
    idata = to_arviz(dataclasses.replace(res, potential=None))
    assert "log_likelihood" not in idata.groups()
    assert not idata.smc_diagnostics["resampled"].values.any()
    np.testing.assert_array_equal(idata.smc_diagnostics["ancestors"].values,
                                  np.broadcast_to(np.arange(K), (T, G, K)))
    np.testing.assert_array_equal(idata.sample_stats["log_weight"].values, 0.0)
    plot(res, tmp_path / "plain.png")
    assert (tmp_path / "plain.png").read_bytes()[:8] == PNG_SIGNATURE


class RandomWalk:
    num_steps = 5

    def init(self, G, K, generator):
        return torch.zeros(G, K, 3, dtype=torch.float64)

    def move(self, t, x, generator):
        return x + torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def log_potential(self, t, x_prev, x):
        return -0.5 * ((x - 1.0) ** 2).sum(-1)


def test_engine_result_without_schedule(tmp_path):
    res = engine.run(RandomWalk(), 2, 8, Resampler("systematic", 0.5), torch.Generator().manual_seed(1))
    idata = to_arviz(res)
    assert "log_likelihood" not in idata.groups() and "sigma" not in idata.smc_diagnostics
    assert idata.posterior["x"].shape == (2, 8, 3)
    assert "nfe" not in idata.attrs
    plot(res, tmp_path / "walk.png", title="random walk")
    assert (tmp_path / "walk.png").read_bytes()[:8] == PNG_SIGNATURE
    assert summary(res).startswith("smcdiff run: 2 groups x 8 particles, 5 steps")


def test_dict_state_gives_one_posterior_variable_per_entry():
    res = engine.run(RandomWalk(), 2, 4, None, torch.Generator().manual_seed(0))
    state = {"x": res.x, "cond.label": torch.arange(8).reshape(2, 4)}
    idata = to_arviz(dataclasses.replace(res, x=state))
    assert set(idata.posterior.data_vars) == {"x", "cond.label"}
    assert idata.posterior["cond.label"].dims == ("chain", "draw")


@pytest.mark.parametrize("num_groups, num_particles, num_steps", [(2, 1, 6), (20, 3, 1)])  # K = 1; T = 1, G > 16
def test_plot_writes_a_png(tmp_path, num_groups, num_particles, num_steps):
    import matplotlib.image

    res = run(num_groups, num_particles, num_steps)
    path = tmp_path / "diag.png"
    plot(res, path, title="test")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).shape == (480, 1500, 4)


def test_summary(result):
    text = summary(result)
    assert text.splitlines()[0] == f"smcdiff run: {G} groups x {K} particles, {T} steps, NFE/particle {result.nfe:g}"
    assert "final ESS / K" in text and "resampling events" in text
    logz = result.log_evidence.numpy()
    assert f"{logz.mean():.4f}" in text and f"{logz.std(ddof=1):.4f}" in text


def test_bad_input(result, tmp_path):
    with pytest.raises(TypeError, match="missing .*ancestors"):
        to_arviz(types.SimpleNamespace(x=result.x, log_weights=result.log_weights))
    with pytest.raises(TypeError, match="missing"):
        plot(object(), tmp_path / "never.png")
    with pytest.raises(ValueError, match=r"ancestors must have shape \(T, G, K\)"):
        to_arviz(dataclasses.replace(result, ancestors=result.ancestors[:, :, :-1]))
    with pytest.raises(ValueError, match=r"sigmas must have shape \(T \+ 1,\)"):
        to_arviz(dataclasses.replace(result, sigmas=result.sigmas[:-1]))
    with pytest.raises(TypeError, match="log_weights must be a torch.Tensor"):
        to_arviz(dataclasses.replace(result, log_weights=result.log_weights.tolist()))
    with pytest.raises(ValueError, match=r"ancestors must be particle indices in \[0, 15\]"):
        plot(dataclasses.replace(result, ancestors=result.ancestors + 1), tmp_path / "never.png")
    with pytest.raises(ValueError, match=r"x entry 'x' must have leading dims \(G, K\)"):
        to_arviz(dataclasses.replace(result, x=result.x[:, :-1]))
    with pytest.raises(ValueError, match="group must be"):
        plot(result, tmp_path / "never.png", group=G)
    assert not (tmp_path / "never.png").exists()


def test_module_docstring_example_runs(tmp_path, monkeypatch):
    # the example writes into a fresh temporary folder; point tempfile at tmp_path to inspect it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    failures, attempted = doctest.testmod(diagnostics, optionflags=doctest.ELLIPSIS)
    assert attempted > 5 and failures == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (folder / "run.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (folder / "run.nc").stat().st_size > 0
