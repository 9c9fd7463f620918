import math

import pytest
import torch

from smcdiff.weights import DetectorLikelihood, Scale, Sum, Window, evaluate_terms, potential_name

X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
SIGMA = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)


def quad(x, sigma, x0_hat):
    return -(x0_hat ** 2).sum(-1)


def lin(x, sigma, x0_hat):
    return 2.0 * x0_hat[:, 0]


class TwoTerms:
    """A potential with named terms and a name."""

    name = "pair"

    def __call__(self, x, sigma, x0_hat):
        return x0_hat[:, 1] + sigma

    def terms(self, x, sigma, x0_hat):
        return {"a": x0_hat[:, 1], "b": sigma.clone()}


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, x0_hat):
        self.calls += 1
        return self.fn(x, sigma, x0_hat)


def test_sum_value_and_flattened_terms():
    V = Sum(quad, lambda x, s, x0: x0[:, 2], TwoTerms(), Scale(lin, 0.5, name="half"))
    expect = quad(X, SIGMA, X) + X[:, 2] + (X[:, 1] + SIGMA) + 0.5 * lin(X, SIGMA, X)
    torch.testing.assert_close(V(X, SIGMA, X), expect)
    terms = V.terms(X, SIGMA, X)
    assert list(terms) == ["quad", "term1", "pair.a", "pair.b", "half"]
    torch.testing.assert_close(terms["half"], X[:, 0])
    torch.testing.assert_close(terms["pair.b"], SIGMA)
    value, recorded = evaluate_terms(V, X, SIGMA, X)
    torch.testing.assert_close(value, expect)
    assert list(recorded) == list(terms)


def test_nested_sum_prefixes_and_detector_terms():
    det = DetectorLikelihood(lambda x0: torch.sigmoid(x0), [0, 2], torch.tensor([0.5, 0.5]), name="caption")
    V = Sum(Sum(quad, lin, name="inner"), det)
    terms = V.terms(X, SIGMA, X)
    assert list(terms) == ["inner.quad", "inner.lin", "caption.object:0", "caption.object:2"]
    torch.testing.assert_close(sum(terms.values()), V(X, SIGMA, X))


def test_sum_rejects_duplicate_names_and_empty():
    with pytest.raises(ValueError, match=r"distinct names, \['quad'\]"):
        Sum(quad, Scale(quad, 2.0))
    Sum(quad, Scale(quad, 2.0, name="quad2"))  # fine once renamed
    with pytest.raises(ValueError, match="at least one"):
        Sum()
    with pytest.raises(TypeError, match="argument 1"):
        Sum(quad, 3.0)


def test_scale_values_terms_and_zero():
    torch.testing.assert_close(Scale(quad, -0.25)(X, SIGMA, X), -0.25 * quad(X, SIGMA, X))
    terms = Scale(TwoTerms(), 3.0).terms(X, SIGMA, X)
    torch.testing.assert_close(terms["b"], 3.0 * SIGMA)
    assert Scale(quad, 2.0).terms(X, SIGMA, X).keys() == {"quad"}
    # lam = 0: exactly zero, even for a potential that is -inf, and the child is not evaluated;
    # a terms-less child without a name is recorded as "scaled".
    child = Counting(lambda x, s, x0: torch.full((5,), -math.inf, dtype=torch.float64))
    zero = Scale(child, 0.0)
    assert torch.equal(zero(X, SIGMA, X), torch.zeros(5, dtype=torch.float64)) and child.calls == 0
    value, terms = evaluate_terms(zero, X, SIGMA, X)
    assert torch.equal(value, torch.zeros(5, dtype=torch.float64)) and list(terms) == ["scaled"]
    assert torch.equal(terms["scaled"], torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        Scale(quad, math.inf)


def test_window_masks_per_sample():
    W = Window(lin, sigma_min=0.1, sigma_max=10.0)
    inside = torch.tensor([False, True, True, True, False])  # bounds are inclusive
    expect = torch.where(inside, lin(X, SIGMA, X), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(W(X, SIGMA, X), expect, rtol=0, atol=0)
    assert W.terms(X, SIGMA, X).keys() == {"lin"}
    terms = Window(TwoTerms(), sigma_max=1.0).terms(X, SIGMA, X)
    torch.testing.assert_close(terms["b"], torch.tensor([0.01, 0.1, 1.0, 0.0, 0.0], dtype=torch.float64))
    # -inf outside the window is masked to 0, inside it stays -inf.
    ninf = Window(lambda x, s, x0: torch.full((5,), -math.inf, dtype=torch.float64), sigma_max=0.5)
    assert ninf(X, SIGMA, X).tolist() == [-math.inf, -math.inf, 0.0, 0.0, 0.0]


def test_window_skips_child_when_batch_is_outside():
    child = Counting(lin)
    W = Window(child, sigma_min=100.0)
    assert torch.equal(W(X, SIGMA, X), torch.zeros(5, dtype=torch.float64))
    value, terms = evaluate_terms(W, X, SIGMA, X)
    assert child.calls == 0 and list(terms) == ["windowed"] and torch.equal(value, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma_min <= sigma_max"):
        Window(lin, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma must have shape"):
        W(X, SIGMA[:3], X)


def test_term_names_are_stable_when_children_are_skipped():
    calls = []

    def probs(x0_hat):
        calls.append(1)
        return torch.sigmoid(x0_hat)

    det = DetectorLikelihood(probs, [0, 2], torch.tensor([0.5, 0.5]), name="caption")
    V = Sum(quad, Window(det, sigma_max=1.0), Scale(TwoTerms(), 0.0))
    # TwoTerms has no term_names, so its zero-scaled version is one zero term under its name.
    assert V.term_names == ("quad", "caption.object:0", "caption.object:2", "pair")
    inside = V.terms(X, SIGMA, X)
    assert tuple(inside) == V.term_names and len(calls) == 1
    outside = V.terms(X, SIGMA + 5.0, X)  # every sigma > 1: the detector is not run
    assert tuple(outside) == V.term_names and len(calls) == 1
    assert torch.equal(outside["caption.object:2"], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(inside["pair"], torch.zeros(5, dtype=torch.float64))


def test_evaluate_terms_plain_functions_and_names():
    value, terms = evaluate_terms(quad, X, SIGMA, X)
    assert list(terms) == ["quad"] and torch.equal(value, quad(X, SIGMA, X))
    _, terms = evaluate_terms(lambda x, s, x0: x0[:, 0], X, SIGMA, X)
    assert list(terms) == ["potential"]
    assert potential_name(TwoTerms()) == "pair" and potential_name(object(), "term3") == "term3"
    # float32 outputs come back as float64.
    value, _ = evaluate_terms(lambda x, s, x0: x0[:, 0].float(), X, SIGMA, X)
    assert value.dtype == torch.float64


@pytest.mark.parametrize("fn, msg", [
    (lambda x, s, x0: x0, r"'potential' must return one log-value per sample, a tensor of shape \(5,\), got \(5, 3\)"),
    (lambda x, s, x0: 1.0, "got float"),
    (lambda x, s, x0: x0[:4, 0], r"got \(4,\)"),
    (lambda x, s, x0: torch.where(x0[:, 0] > 0, math.nan, 0.0).double(), "NaN in term 'potential'"),
])
def test_evaluate_terms_rejects_bad_outputs(fn, msg):
    # Make sure the NaN case actually contains a NaN.
    with pytest.raises(ValueError, match=msg):
        evaluate_terms(fn, X, SIGMA, X)


def test_evaluate_terms_rejects_bad_terms():
    class BadTerms:
        name = "bad"

        def __call__(self, x, s, x0):
            return x0[:, 0]

        def terms(self, x, s, x0):
            return {"ok": x0[:, 0], "wide": x0}

    with pytest.raises(ValueError, match=r"potential 'bad'.terms\['wide'\]"):
        evaluate_terms(BadTerms(), X, SIGMA, X)
    with pytest.raises(ValueError, match=r"potential 'bad'.terms\['wide'\]"):
        evaluate_terms(Sum(quad, BadTerms()), X, SIGMA, X)
    with pytest.raises(TypeError, match="callable"):
        evaluate_terms(None, X, SIGMA, X)
