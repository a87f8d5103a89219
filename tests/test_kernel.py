"""The 1-D multi-scale decaying kernel: construction, parameter growth, decay, normalization."""
import pytest
import torch

from reference import reference_axis_kernel
from sgconvnext.kernel import SGKernel1d, num_scales


@pytest.mark.parametrize('decay', [0.5, 0.7])
@pytest.mark.parametrize('l_max,kernel_dim', [(1, 8), (7, 8), (8, 8), (56, 8), (100, 16), (33, 4)])
@pytest.mark.parametrize('length', [1, 5, 56, 130])
def test_kernel_matches_scale_by_scale_reference(l_max, kernel_dim, length, decay):
    torch.manual_seed(0)
    k = SGKernel1d(6, l_max, kernel_dim, decay=decay).double()  # the cast rebuilds the basis in float64
    with torch.no_grad():
        k.weight.normal_()
    out = k(length)
    assert out.shape == (6, 2 * length - 1)
    torch.testing.assert_close(out, reference_axis_kernel(k, length), rtol=1e-12, atol=1e-12)


def test_scales_cover_l_max():
    for l_max in (1, 7, 8, 9, 56, 57, 1000):
        for d in (1, 4, 8, 32):
            n = num_scales(l_max, d)
            assert d * 2 ** (n - 1) >= l_max                   # the concatenation covers l_max
            assert n == 1 or d * 2 ** (n - 2) < l_max           # and one scale fewer would not


def test_taps_past_l_max_are_zero():
    k = SGKernel1d(3, 10, 4)
    out = k(25)  # centre at 24
    assert torch.all(out[:, :24 - 9] == 0) and torch.all(out[:, 24 + 10:] == 0)
    assert torch.all(out[:, 24 - 9:24 + 10] != 0)


def test_parameters_grow_by_a_constant_per_doubling():
    counts = [sum(p.numel() for p in SGKernel1d(16, l_max, 8).parameters()) for l_max in (64, 256, 1024, 4096)]
    steps = [b - a for a, b in zip(counts, counts[1:])]
    print('params at l_max 64, 256, 1024, 4096:', counts)
    # Each 4x of l_max adds two scales: 2 sides x 2 scales x kernel_dim values per channel.
    assert steps == [16 * 2 * 2 * 8] * 3


def test_mean_tap_magnitude_decreases_with_distance():
    torch.manual_seed(0)
    k = SGKernel1d(512, 256, 8)
    taps = k.kernel().detach()  # (C, 511), centre 255
    centre = k.l_max - 1
    means = []
    for start, stop in k.scale_bounds():
        positive = taps[:, centre + start:centre + stop]
        negative = taps[:, centre - stop + 1:centre - start + 1]
        means.append(torch.cat([positive, negative], -1).abs().mean().item())
    print('mean |tap| per scale:', [f'{m:.4f}' for m in means])
    assert all(a > b for a, b in zip(means, means[1:]))


def test_unit_norm_at_init_and_norm_is_persistent():
    k = SGKernel1d(8, 40, 8)
    torch.testing.assert_close(k().norm(dim=-1), torch.ones(8))
    assert 'norm' in k.state_dict() and 'basis' not in k.state_dict()
    other = SGKernel1d(8, 40, 8)
    other.load_state_dict(k.state_dict())
    torch.testing.assert_close(other(17), k(17))


def test_meta_device_then_to_empty_rebuilds_the_basis():
    real = SGKernel1d(4, 30, decay=0.7)
    meta = SGKernel1d(4, 30, decay=0.7, device='meta').to_empty(device='cpu')
    meta.load_state_dict(real.state_dict())  # basis is not in the state dict: it must be rebuilt, not garbage
    torch.testing.assert_close(meta(30), real(30))


def test_construction_is_deterministic_under_a_seed():
    torch.manual_seed(3)
    a = SGKernel1d(4, 30)
    torch.manual_seed(3)
    b = SGKernel1d(4, 30)
    assert torch.equal(a(30), b(30)) and torch.equal(a.norm, b.norm)


@pytest.mark.parametrize('kwargs,error', [
    (dict(channels=0, l_max=8), ValueError),
    (dict(channels=4, l_max=0), ValueError),
    (dict(channels=4, l_max=-3), ValueError),
    (dict(channels=4, l_max=8, kernel_dim=0), ValueError),
    (dict(channels=4, l_max=8.0), TypeError),
    (dict(channels=4, l_max=8, decay=0.0), ValueError),
    (dict(channels=4, l_max=8, decay=1.5), ValueError),
    (dict(channels=4, l_max=8, decay='0.5'), TypeError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match='expected|must'):
        SGKernel1d(**kwargs)


def test_bad_length():
    with pytest.raises(ValueError, match='length'):
        SGKernel1d(2, 8)(0)
