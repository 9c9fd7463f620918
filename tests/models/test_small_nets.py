"""Small networks: EDM preconditioning against its formulas, the denoiser/discriminator contracts,
seeded initialisation (global RNG untouched), save/load round trips."""

import math

import pytest
import torch

from smcdiff.kernels.schedules import vp_alpha, vp_time
from smcdiff.models.small_nets import (
    ConvDenoiser,
    DigitsClassifier,
    MLPDenoiser,
    TimeDiscriminator,
    edm_preconditioning,
    init_parameters_,
    load,
    save,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_preconditioning_formulas_at_known_sigma():
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, 0.5)
    # sd = 0.5: c_skip = .25/(s²+.25), c_out = .5 s/sqrt(s²+.25), c_in = 1/sqrt(s²+.25), c_noise = ln(s)/4
    torch.testing.assert_close(c_skip, torch.tensor([0.5, 0.2, 0.25 / 4.25], dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_out, torch.tensor([0.25 / math.sqrt(0.5), 0.5 / math.sqrt(1.25), 1 / math.sqrt(4.25)],
                                                   dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_in, torch.tensor([1 / math.sqrt(0.5), 1 / math.sqrt(1.25), 1 / math.sqrt(4.25)],
                                                  dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_noise, torch.tensor([math.log(0.5) / 4, 0.0, math.log(2.0) / 4], dtype=F64),
                               rtol=1e-15, atol=0)
    # EDM's unit-variance condition on the training target: Var[(y − c_skip·(y + σn))/c_out] = 1 for Var y = σd².
    torch.testing.assert_close(c_skip**2 * (sigma**2 + 0.25) - 2 * c_skip * 0.25 + 0.25, c_out**2)


@pytest.mark.parametrize("make, shape", [(lambda: MLPDenoiser(2, hidden=16, depth=2, generator=gen(0)), (2,)),
                                         (lambda: ConvDenoiser(1, 8, width=8, generator=gen(0)), (1, 8, 8))])
def test_denoiser_is_c_skip_x_plus_c_out_F(make, shape):
    net = make()
    x = torch.randn(5, *shape, generator=gen(1), dtype=F64)
    sigma = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=F64)
    y = net(x, sigma)
    assert y.shape == x.shape and y.dtype == F64
    assert net(x.float(), sigma.float()).dtype == torch.float32
    assert net(x, torch.tensor(0.5)).shape == x.shape  # scalar sigma broadcasts
    # With F's last layer zeroed, D = c_skip·x exactly (the skip arithmetic runs in float64).
    last = net.out if isinstance(net, MLPDenoiser) else net.conv_out
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(1.0)
    c_skip, c_out, _, _ = edm_preconditioning(sigma, 0.5)
    b = (-1,) + (1,) * len(shape)
    torch.testing.assert_close(net(x, sigma), c_skip.reshape(b) * x + c_out.reshape(b), rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="expected x of shape"):
        net(torch.zeros(5, 3, dtype=F64), sigma)


def test_every_parameter_gets_a_gradient():
    net = ConvDenoiser(1, 8, width=8, generator=gen(0))
    x = torch.randn(4, 1, 8, 8, generator=gen(1), dtype=F64)
    net(x, torch.tensor([0.1, 0.5, 1.0, 5.0], dtype=F64)).square().sum().backward()
    # The output conv's zero init would hide everything else; the default init is non-zero.
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = (MLPDenoiser(2, hidden=16, generator=gen(s)) for s in (3, 3, 4))
    ConvDenoiser(width=8)
    TimeDiscriminator((1, 8, 8), hidden=16)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    assert not torch.equal(a.inp.weight, c.inp.weight)
    # Bounds: U(−1/√fan_in, 1/√fan_in), biases 0; norms 1/0.
    w, bias = a.inp.weight.detach(), a.inp.bias.detach()
    assert float(w.abs().max()) <= 1 / math.sqrt(2) and float(bias.abs().max()) == 0
    conv = init_parameters_(ConvDenoiser(width=8), gen(0))
    assert torch.equal(conv.norm_out.weight, torch.ones(8)) and torch.equal(conv.norm_out.bias, torch.zeros(8))
    with pytest.raises(TypeError):
        init_parameters_(a, [gen(0)])


def test_discriminator_log_ratio_is_the_logit_on_vp_scaled_input():
    disc = TimeDiscriminator((3,), hidden=16, generator=gen(0))
    x = torch.randn(4, 3, generator=gen(1), dtype=F64)
    sigma = torch.tensor([0.002, 0.5, 1.0, 80.0], dtype=F64)
    ell = disc(x, sigma)
    assert ell.shape == (4,) and ell.dtype == F64
    tau = vp_time(sigma)
    torch.testing.assert_close(ell, disc.logit(vp_alpha(tau)[:, None] * x, tau).to(F64))
    # Differentiable in x (as DG guidance needs).
    x_ = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(disc.log_ratio(x_, sigma).sum(), x_)
    assert g.shape == x.shape and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0)


def test_discriminator_feature_hook():
    W = torch.randn(4, 6, generator=gen(9))  # a stand-in frozen "classifier"
    calls = []

    def features(x_vp, tau):
        calls.append(torch.is_grad_enabled())
        return (x_vp @ W) * tau[:, None]

    disc = TimeDiscriminator((4,), hidden=8, features=features, feature_dim=6, generator=gen(0))
    assert all(not n.startswith("features") for n in disc.state_dict())
    x = torch.randn(3, 4, generator=gen(1), dtype=F64, requires_grad=True)
    disc(x, torch.ones(3, dtype=F64)).sum().backward()
    assert x.grad is not None and calls == [True]
    disc.logit(torch.zeros(3, 4), torch.ones(3))  # no grad needed for x: features run without a graph
    assert calls == [True, False]
    with pytest.raises(ValueError, match="together"):
        TimeDiscriminator((4,), features=features)


@pytest.mark.parametrize("make, shape", [(lambda: MLPDenoiser(2, hidden=16, depth=2, generator=gen(5)), (2,)),
                                         (lambda: ConvDenoiser(1, 8, width=8, generator=gen(5)), (1, 8, 8)),
                                         (lambda: TimeDiscriminator((2, 3), hidden=8, depth=3, generator=gen(5)),
                                          (2, 3))])
def test_save_load_round_trip(tmp_path, make, shape):
    net = make().eval()
    path = tmp_path / "net.pt"
    save(net, path)
    back = load(path)
    assert type(back) is type(net) and back.config == net.config
    x = torch.randn(4, *shape, generator=gen(2), dtype=F64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 20.0], dtype=F64)
    with torch.no_grad():
        assert torch.equal(back(x, sigma), net(x, sigma))


def test_load_refuses_unknown_classes_and_missing_features(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"config": {"class": "os.system", "kwargs": {}}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="unknown network class"):
        load(path)
    with pytest.raises(ValueError):
        save(torch.nn.Linear(2, 2), path)
    disc = TimeDiscriminator((4,), hidden=8, features=lambda x, t: x[:, :2], feature_dim=2, generator=gen(0))
    save(disc, path)
    with pytest.raises(ValueError, match="features="):
        load(path)
    back = load(path, features=lambda x, t: x[:, :2])
    x = torch.randn(2, 4, dtype=F64, generator=gen(1))
    with torch.no_grad():
        assert torch.equal(back(x, torch.ones(2)), disc(x, torch.ones(2)))


def test_digits_classifier_shapes_features_and_round_trip(tmp_path):
    clf = DigitsClassifier(width=8, feature_dim=6, generator=gen(3)).eval()
    x = torch.rand(5, 1, 8, 8, generator=gen(4), dtype=F64) * 2 - 1
    with torch.no_grad():
        feats, logits = clf.features(x), clf(x)
        assert feats.shape == (5, 6) and feats.dtype == torch.float32
        assert logits.shape == (5, 10)
        # The logits are the head applied to the features.
        assert torch.allclose(logits, clf.head(feats))
    save(clf, tmp_path / "clf.pt")
    back = load(tmp_path / "clf.pt")
    with torch.no_grad():
        assert torch.equal(back(x), logits)
    assert torch.equal(DigitsClassifier(width=8, feature_dim=6, generator=gen(3)).feature.weight, clf.feature.weight)
    with pytest.raises(ValueError, match="expected x of shape"):
        clf(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="num_classes"):
        DigitsClassifier(num_classes=1)
