"""The 1-D multi-scale decaying kernel: construction, parameter growth, decay, normalization, size policies,
the geometry in the state dict."""
import pytest
import torch

from reference import reference_axis_kernel
from sgconvnext import resize as resize_module
from sgconvnext.kernel import SGKernel1d, num_scales, pack_geometry, unpack_geometry


@pytest.mark.parametrize('resize', ['fixed', 'stretch'])
@pytest.mark.parametrize('decay', [0.5, 0.7])
@pytest.mark.parametrize('l_max,kernel_dim', [(1, 8), (7, 8), (8, 8), (56, 8), (100, 16), (33, 4)])
@pytest.mark.parametrize('length', [1, 5, 56, 130])
def test_kernel_matches_scale_by_scale_reference(l_max, kernel_dim, length, decay, resize):
    torch.manual_seed(0)
    k = SGKernel1d(6, l_max, kernel_dim, decay=decay, resize=resize).double()  # the cast rebuilds the basis in float64
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


def test_fixed_taps_past_l_max_are_zero():
    k = SGKernel1d(3, 10, 4, resize='fixed')
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


def test_stretch_spans_every_length():
    torch.manual_seed(0)
    k = SGKernel1d(4, 12, 4, resize='stretch').double()
    built = k(12).detach()
    for length in (3, 5, 12, 25, 48):
        taps = k(length).detach()
        assert taps.shape == (4, 2 * length - 1)
        assert torch.all(taps[:, [0, -1]] != 0)  # the outermost taps of every length take part: global
    for length in (24, 48):  # an exact 2x / 4x stretch keeps every built tap at its scaled place
        r = length // 12
        torch.testing.assert_close(k(length).detach()[:, (length - 1) % r::r], built / r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k(600).detach().sum(-1), built.sum(-1), rtol=2e-3, atol=0)  # fine sampling: same sum


@pytest.mark.parametrize('l_max,length', [(12, 3), (12, 5), (56, 14), (56, 40), (7, 6), (12, 24), (12, 36), (10, 17)])
def test_stretch_shares_out_every_built_tap_with_weight_one(l_max, length):
    s = resize_module.stretch_matrix(l_max, length)  # (2 l_max - 1, 2 length - 1)
    r = l_max / length
    offsets = torch.arange(-(l_max - 1), l_max, dtype=torch.float64)
    reach = offsets.abs() <= (length - 1) * r  # built taps between the new kernel's outermost taps
    tol = 1e-12 if r >= 1 or (1 / r).is_integer() else 0.25 * r  # growing by a non-integer factor: about 1
    torch.testing.assert_close(s.sum(1)[reach], torch.ones(int(reach.sum()), dtype=torch.float64), rtol=0, atol=tol)
    assert torch.all(s >= 0)


def test_stretched_basis_is_cached_per_length_and_rebuilt_on_casts(monkeypatch):
    calls = []
    real = resize_module.stretch_matrix
    monkeypatch.setattr('sgconvnext.kernel.stretch_matrix', lambda *a, **kw: calls.append(a[:2]) or real(*a, **kw))
    k = SGKernel1d(3, 10, 4, resize='stretch')
    for _ in range(3):
        k(20), k(7), k(10)
    assert calls == [(10, 20), (10, 7)]  # once per length; the built length needs none
    k.double()
    assert k(20).dtype == torch.float64 and calls[-1] == (10, 20)
    assert k.stretched_basis(20).dtype == torch.float64


def test_fixed_and_stretch_agree_at_the_built_length():
    torch.manual_seed(0)
    a = SGKernel1d(3, 9, 4, resize='fixed')
    b = SGKernel1d(3, 9, 4, resize='stretch')
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(9), b(9)) and not torch.allclose(a(18), b(18))


@pytest.mark.parametrize('value,error', [('nope', ValueError), (3, TypeError), (None, TypeError), ('Fixed', ValueError)])
def test_unknown_resize_policy_names_the_choices(value, error):
    with pytest.raises(error, match=r"\('fixed', 'stretch'\)"):
        SGKernel1d(2, 8, resize=value)


@pytest.mark.parametrize('decay', [0.5, 0.3, 1 / 3, 1.0])
def test_geometry_round_trips_exactly(decay):
    assert unpack_geometry(pack_geometry(56, 8, decay)) == (56, 8, decay)
    k = SGKernel1d(2, 17, 4, decay=decay).half().double()  # dtype casts must not touch the geometry
    assert unpack_geometry(k.state_dict()['geometry']) == (17, 4, decay)


@pytest.mark.parametrize('resize', ['fixed', 'stretch'])
@pytest.mark.parametrize('saved,built', [((14, 8, 0.5), (24, 8, 0.5)), ((60, 8, 0.5), (56, 8, 0.5)),
                                         ((10, 4, 0.3), (10, 8, 0.5))])
def test_loading_another_geometry_takes_it_and_keeps_the_function(saved, built, resize):
    torch.manual_seed(0)
    source = SGKernel1d(5, saved[0], saved[1], decay=saved[2], resize=resize).double()
    target = SGKernel1d(5, built[0], built[1], decay=built[2], resize=resize).double()
    param = target.weight
    target.load_state_dict(source.state_dict())
    assert (target.l_max, target.kernel_dim, target.decay) == saved and target.weight is param  # same Parameter
    assert target.geometry_change == ('took', saved, built)
    for length in (1, 6, saved[0], built[0], 50):
        torch.testing.assert_close(target(length), source(length), rtol=0, atol=0)


def test_a_state_dict_without_geometry_is_refused():
    state = SGKernel1d(3, 10).state_dict()
    del state['geometry']
    with pytest.raises(ValueError, match='geometry is missing.*add_kernel_geometry'):
        SGKernel1d(3, 10).load_state_dict(state)


@pytest.mark.parametrize('geometry', [torch.tensor([10, 8]), torch.tensor([10., 8., 0.5]), pack_geometry(10, 8, 0.5)[:2],
                                      torch.tensor([0, 8, pack_geometry(1, 1, 0.5)[2].item()])])
def test_a_bad_geometry_entry_is_refused(geometry):
    state = SGKernel1d(3, 10).state_dict()
    state['geometry'] = geometry
    with pytest.raises(ValueError, match='geometry'):
        SGKernel1d(3, 10).load_state_dict(state)


@pytest.mark.parametrize('saved_l_max', [14, 56])
def test_extend_keeps_the_built_geometry_and_the_saved_taps(saved_l_max):
    torch.manual_seed(0)
    source = SGKernel1d(5, saved_l_max, resize='fixed').double()
    target = SGKernel1d(5, 336, resize='fixed').double()
    target.load_mode = 'extend'
    state = source.state_dict()
    saved_weight = state['weight'].clone()
    target.load_state_dict(state)
    assert target.l_max == 336 and target.geometry_change == ('extended', (saved_l_max, 8, 0.5), (336, 8, 0.5))
    assert torch.equal(state['weight'], saved_weight) and state['geometry'].tolist()[0] == saved_l_max  # not mutated
    torch.testing.assert_close(target(saved_l_max), source(saved_l_max), rtol=1e-12, atol=1e-12)
    # past the saved l_max: the saved sub-kernels run to their natural end (all their taps), then zeros
    end = sum(b - a for a, b in SGKernel1d(1, 10 ** 4).scale_bounds()[:source.n_scales])
    natural = SGKernel1d(5, end, resize='fixed').double()
    natural.weight.data.copy_(source.weight)
    natural.norm.copy_(source.norm)
    full = target(336)
    torch.testing.assert_close(full[:, 336 - end:336 + end - 1], natural(end), rtol=1e-12, atol=1e-12)
    assert full[:, :336 - end].abs().max() == 0 and full[:, 336 + end - 1:].abs().max() == 0


@pytest.mark.parametrize('saved,built,resize', [((60, 8, 0.5), (56, 8, 0.5), 'fixed'), ((14, 4, 0.5), (56, 8, 0.5), 'fixed'),
                                                ((14, 8, 0.3), (56, 8, 0.5), 'fixed'), ((14, 8, 0.5), (56, 8, 0.5), 'stretch')])
def test_extend_takes_the_saved_geometry_where_it_cannot_extend(saved, built, resize):
    # a smaller l_max, another kernel_dim or decay, or the stretch policy (which resamples to every length)
    source = SGKernel1d(3, saved[0], saved[1], decay=saved[2], resize=resize).double()
    target = SGKernel1d(3, built[0], built[1], decay=built[2], resize=resize).double()
    target.load_mode = 'extend'
    target.load_state_dict(source.state_dict())
    assert (target.l_max, target.kernel_dim, target.decay) == saved and target.geometry_change[0] == 'took'
    torch.testing.assert_close(target(40), source(40), rtol=0, atol=0)
