"""The class-conditional digits denoiser: seeded training, save/load, conditioning, shipped files."""

from __future__ import annotations

import json

import pytest
import torch

from smcdiff.apps.train_conditional import train_conditional_digits
from smcdiff.models.conditional_digits import (
    CONDITIONAL_DIGITS_RECIPE,
    CONDITIONAL_FILES,
    ConditionalConvDenoiser,
    load_conditional_digits,
    save_conditional,
)
from smcdiff.models.pretrained import DIGITS_ASSETS


def _labels(classes):
    return torch.nn.functional.one_hot(torch.tensor(classes), 10).float()


def test_training_is_reproducible_from_the_seed(tmp_path):
    a, ma = train_conditional_digits(tmp_path / "a", recipe={"steps": 3, "width": 8})
    b, _ = train_conditional_digits(recipe={"steps": 3, "width": 8})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert ma["recipe"] == {**CONDITIONAL_DIGITS_RECIPE, "steps": 3, "width": 8}
    c, _ = train_conditional_digits(recipe={"steps": 3, "width": 8, "seed": 1})
    assert not torch.equal(c.state_dict()["conv_in.weight"], a.state_dict()["conv_in.weight"])
    loaded = load_conditional_digits(tmp_path / "a" / CONDITIONAL_FILES["weights"])
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = torch.full((4,), 0.7)
    assert torch.equal(loaded(x, s, class_labels=_labels([0, 1, 2, 3])), a(x, s, class_labels=_labels([0, 1, 2, 3])))
    manifest = json.loads((tmp_path / "a" / CONDITIONAL_FILES["manifest"]).read_text())
    assert manifest["recipe"]["steps"] == 3 and "seconds" in manifest


def test_the_class_changes_the_output_and_float64_passes_through():
    net = ConditionalConvDenoiser(width=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = net(x, torch.full((2,), 0.5, dtype=torch.float64), class_labels=_labels([3, 3]))
    other = net(x, torch.full((2,), 0.5, dtype=torch.float64), class_labels=_labels([3, 4]))
    assert out.dtype == torch.float64 and torch.equal(out[0], other[0]) and not torch.equal(out[1], other[1])


def test_clear_errors():
    net = ConditionalConvDenoiser(width=8)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="needs class_labels"):
        net(x, torch.ones(2))
    with pytest.raises(ValueError, match=r"class_labels must have shape \(N, 10\)"):
        net(x, torch.ones(2), class_labels=torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected x of shape"):
        net(torch.zeros(2, 8, 8), torch.ones(2), class_labels=_labels([0, 1]))
    with pytest.raises(ValueError, match="unknown recipe keys"):
        train_conditional_digits(recipe={"epochs": 3})
    with pytest.raises(FileNotFoundError, match="python -m smcdiff.apps.train_conditional"):
        load_conditional_digits("no/such/file.pt")
    with pytest.raises(ValueError, match="label_dim must be >= 1"):
        ConditionalConvDenoiser(label_dim=0)


def test_no_global_rng_draws():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ConditionalConvDenoiser(width=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


def test_shipped_weights_and_manifest(tmp_path):
    path = DIGITS_ASSETS / CONDITIONAL_FILES["weights"]
    assert path.stat().st_size < 1.5e6
    manifest = json.loads((DIGITS_ASSETS / CONDITIONAL_FILES["manifest"]).read_text())
    assert manifest["recipe"] == CONDITIONAL_DIGITS_RECIPE
    # The held-out EDM loss is lower with the right labels than with wrong ones: the class is used.
    assert manifest["test_loss_right_label"] < manifest["test_loss_wrong_label"]
    net = load_conditional_digits()
    assert net.label_dim == 10 and not any(p.requires_grad for p in net.parameters())
    save_conditional(net, tmp_path / "copy.pt")
    assert torch.equal(load_conditional_digits(tmp_path / "copy.pt").state_dict()["conv_out.weight"],
                       net.state_dict()["conv_out.weight"])
