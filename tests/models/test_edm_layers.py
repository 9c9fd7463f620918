"""EDM layer primitives: UNetBlock parity with the reference outputs, and each layer's defining maths.

The parity data (``edm_unetblock_cases.pt``) lives in ``shared/fixtures`` beside the repository;
parity tests skip when that folder is absent. Tolerances are float32 rounding (outputs are O(1)).
"""

import math

import pytest
import torch
from torch.nn import functional as F

from smcdiff.models.edm_layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
)

from tests.paths import FIXTURES  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def load_fixture(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"parity fixture {path} not found (shared/fixtures must sit beside the repo)")
    return torch.load(path, weights_only=True)


def widen(state_dict):
    """Fixture parameters are stored as float16 (exactly representable); the reference held float32."""
    return {k: (v.float() if v.dtype == torch.float16 else v) for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------
# UNetBlock against the reference outputs


@pytest.mark.parametrize("index", range(4))
def test_unetblock_cases_reproduce_reference(index):
    case = load_fixture("edm_unetblock_cases.pt")["cases"][index]
    block = UNetBlock(**case["init_kwargs"]).eval()
    state = widen(case["state_dict"])
    block.load_state_dict(state, strict=True)
    assert list(block.state_dict()) == list(state)  # registration order
    assert block.num_heads == case["num_heads"]
    with torch.no_grad():
        out = block(case["x"], case["emb"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, case["output"], atol=1e-5, rtol=0, msg=case["name"])


def test_unetblock_head_count_rule():
    # num_heads wins; otherwise out_channels // channels_per_head; below one head: no attention.
    assert UNetBlock(8, 32, 4, attention=True, num_heads=2).num_heads == 2
    assert UNetBlock(8, 128, 4, attention=True).num_heads == 2
    narrow = UNetBlock(8, 32, 4, attention=True)
    assert narrow.num_heads == 0 and not hasattr(narrow, "qkv")
    assert UNetBlock(8, 128, 4, attention=False, num_heads=2).num_heads == 0
    with pytest.raises(ValueError, match="heads"):
        UNetBlock(8, 32, 4, attention=True, num_heads=3)


def test_unetblock_skip_layout():
    assert UNetBlock(16, 16, 4).skip is None
    assert UNetBlock(16, 32, 4).skip.weight.shape == (32, 16, 1, 1)
    pure = UNetBlock(16, 16, 4, down=True).skip  # resampling only, still owns the filter
    assert pure.weight is None and pure.bias is None
    assert [k for k in pure.state_dict()] == ["resample_filter"]
    assert UNetBlock(16, 16, 4, up=True, resample_proj=True).skip.weight.shape == (16, 16, 1, 1)


def test_unetblock_additive_embedding_equals_formula():
    torch.manual_seed(0)
    block = UNetBlock(8, 8, 6, adaptive_scale=False, skip_scale=0.5, eps=1e-6).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    h = block.conv0(F.silu(F.group_norm(x, 2, block.norm0.weight, block.norm0.bias, 1e-6)))
    h = h + (emb @ block.affine.weight.T + block.affine.bias)[:, :, None, None]
    h = F.silu(F.group_norm(h, 2, block.norm1.weight, block.norm1.bias, 1e-6))
    expected = (block.conv1(h) + x) * 0.5
    torch.testing.assert_close(block(x, emb), expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Primitives


def test_linear_matches_torch_linear_and_casts_weights():
    lin = Linear(5, 3, init_bias=1.0)
    x = torch.randn(4, 5, dtype=torch.float64)
    out = lin(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.linear(x, lin.weight.double(), lin.bias.double()))
    assert Linear(5, 3, bias=False).bias is None
    with pytest.raises(ValueError, match="init_mode"):
        Linear(5, 3, init_mode="orthogonal")


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1]])
def test_conv2d_resample_filter_and_shapes(taps):
    conv = Conv2d(4, 6, kernel=3, down=True, resample_filter=taps)
    f = torch.tensor(taps, dtype=torch.float32)
    expected = torch.outer(f, f)[None, None] / f.sum() ** 2
    assert list(conv.state_dict()) == ["weight", "bias", "resample_filter"]
    torch.testing.assert_close(conv.resample_filter, expected, atol=0, rtol=0)
    x = torch.randn(2, 4, 8, 8)
    assert conv(x).shape == (2, 6, 4, 4)
    assert Conv2d(4, 6, kernel=3, up=True, resample_filter=taps)(x).shape == (2, 6, 16, 16)
    fused = Conv2d(4, 6, kernel=3, down=True, resample_filter=taps, fused_resample=True)
    assert fused(x).shape == (2, 6, 4, 4)
    fused_up = Conv2d(4, 6, kernel=3, up=True, resample_filter=taps, fused_resample=True)
    assert fused_up(x).shape == (2, 6, 16, 16)
    assert "resample_filter" not in Conv2d(4, 6, kernel=3).state_dict()


def test_conv2d_pure_resampling_preserves_constants():
    # The filter is normalised: interior values of a constant image survive both directions.
    x = torch.full((1, 2, 8, 8), 3.0)
    down = Conv2d(2, 2, kernel=0, down=True, resample_filter=[1, 3, 3, 1])
    up = Conv2d(2, 2, kernel=0, up=True, resample_filter=[1, 3, 3, 1])
    torch.testing.assert_close(down(x)[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    torch.testing.assert_close(up(x)[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))
    # [1, 1] down-sampling is 2x2 average pooling.
    y = torch.randn(1, 2, 8, 8)
    box = Conv2d(2, 2, kernel=0, down=True, resample_filter=[1, 1])
    torch.testing.assert_close(box(y), F.avg_pool2d(y, 2))
    with pytest.raises(ValueError, match="exclusive"):
        Conv2d(2, 2, kernel=3, up=True, down=True)


def test_groupnorm_group_count():
    assert GroupNorm(16).num_groups == 4
    assert GroupNorm(256).num_groups == 32
    gn = GroupNorm(48, eps=1e-6)
    x = torch.randn(2, 48, 3, 3)
    torch.testing.assert_close(gn(x), F.group_norm(x, 12, eps=1e-6))
    with pytest.raises(ValueError, match="too few"):
        GroupNorm(3)


@pytest.mark.parametrize("endpoint", [False, True])
def test_positional_embedding_formula(endpoint):
    c = torch.tensor([-1.5, 0.0, 3.25, 999.0], dtype=torch.float64)
    emb = PositionalEmbedding(8, endpoint=endpoint)(c)
    n = 3 if endpoint else 4
    freqs = torch.tensor([(1 / 10000) ** (i / n) for i in range(4)], dtype=torch.float64)
    expected = torch.cat([torch.cos(c[:, None] * freqs), torch.sin(c[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected, atol=1e-6 * 999, rtol=1e-6)
    assert len(PositionalEmbedding(8).state_dict()) == 0


def test_fourier_embedding_formula():
    torch.manual_seed(0)
    fe = FourierEmbedding(6, scale=16)
    assert fe.freqs.shape == (3,) and list(fe.state_dict()) == ["freqs"]
    c = torch.tensor([-0.7, 0.0, 0.3])
    arg = c[:, None].double() * (2 * math.pi * fe.freqs.double())
    expected = torch.cat([arg.cos(), arg.sin()], dim=1).float()
    torch.testing.assert_close(fe(c), expected, atol=1e-5, rtol=0)


def test_layers_follow_input_dtype():
    block = UNetBlock(16, 32, 8, down=True, attention=True, num_heads=2, adaptive_scale=False)
    x, emb = torch.randn(2, 16, 8, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    assert block(x, emb).dtype == torch.float64  # attention upcasts only to float32 or wider
