import pytest
import torch

from smcdiff.kernels import check_sigmas, iddpm_sigmas, karras_sigmas, ve_sigmas, vp_sigmas

# REFERENCE §1a golden values (N = 18, sigma in [0.002, 80], rho = 7), 5 significant digits.
EDM_18 = [80.0, 57.58598, 40.78557, 28.37458, 19.35245, 12.91008, 8.40094, 5.31519, 3.25682, 1.92334,
          1.08817, 0.58535, 0.29644, 0.13952, 0.05995, 0.02293, 0.00753, 0.00200, 0.0]


def test_karras_golden_values():
    s = karras_sigmas(18)
    assert s.dtype == torch.float64 and s.shape == (19,)
    torch.testing.assert_close(s, torch.tensor(EDM_18, dtype=torch.float64), rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("fn", [karras_sigmas, vp_sigmas, ve_sigmas, iddpm_sigmas])
def test_schedules_are_valid(fn):
    for n in (1, 2, 18, 40):
        s = fn(n)
        assert s.shape == (n + 1,) and s[-1] == 0
        check_sigmas(s)


def test_vp_and_ve_endpoints():
    # sigma_vp(1) with beta_d = 19.9, beta_min = 0.1 is about 152.2 (REFERENCE §1c).
    assert abs(vp_sigmas(10)[0].item() - 152.16) < 0.1
    torch.testing.assert_close(ve_sigmas(10)[[0, 9]], torch.tensor([100.0, 0.02], dtype=torch.float64))


@pytest.mark.parametrize("bad, msg", [
    ([1.0, 2.0, 0.0], "strictly decreasing"),
    ([2.0, 1.0], "end in 0"),
    ([1.0], "at least 2"),
    ([1.0, -0.5, 0.0], "non-negative"),
    ([float("nan"), 0.0], "finite"),
])
def test_check_sigmas_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg):
        check_sigmas(bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        karras_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(10, sigma_min=1.0, sigma_max=0.5)
