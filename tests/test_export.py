"""The contracts timm's convnext keeps: meta device, TorchScript (model and fx graph), ONNX Runtime, torch.compile.

Every comparison is against the eager model on the same weights. The ONNX and compile tests use sgconvnext_atto
(compile and the dynamo exporter with one block per stage, which keeps their graphs small and the suite short).
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from timm.models import create_model

import sgconvnext  # noqa: F401
from sgconvnext import SGConv2d

VARIANTS = ('atto', 'femto', 'pico', 'nano', 'tiny', 'small', 'base', 'large')
ONE_BLOCK = dict(depths=(1, 1, 1, 1))


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


pytestmark = pytest.mark.usefixtures('one_thread')


# ------------------------------------------------------------------------------------------------- meta device

@pytest.mark.parametrize('variant', VARIANTS)
def test_meta_device_build_and_forward(variant):
    model = create_model(f'sgconvnext_{variant}', device='meta', num_classes=7)
    twin = create_model(f'convnext_{variant}', device='meta', num_classes=7)
    assert all(p.is_meta for p in model.parameters())
    for size in ((224, 224), (160, 96)):
        x = torch.randn(2, 3, *size, device='meta')
        out = model(x)
        assert out.is_meta and out.shape == (2, 7)
        assert model.forward_features(x).shape == twin.forward_features(x).shape


@pytest.mark.parametrize('resize', ['stretch', 'fixed'])
def test_meta_device_features_only(resize):
    model = create_model('sgconvnext_atto', device='meta', features_only=True, img_size=224, sg_resize=resize)
    features = model(torch.randn(1, 3, 320, 192, device='meta'))
    assert [tuple(f.shape) for f in features] == [(1, c, 320 // r, 192 // r) for c, r in
                                                  zip((40, 80, 160, 320), (4, 8, 16, 32))]
    assert model.feature_info.channels() == [40, 80, 160, 320]


def test_meta_layer_every_backend():
    for backend in ('auto', 'fft', 'matmul', 'direct'):
        layer = SGConv2d(4, 8, backend=backend, device='meta')
        assert layer(torch.randn(2, 4, 8, 13, device='meta')).shape == (2, 4, 8, 13)


# --------------------------------------------------------------------------------------------------- TorchScript

def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated, still supported
        return torch.jit.script(module)


@pytest.mark.parametrize('resize', ['stretch', 'fixed'])
def test_torchscript_model_matches_eager(resize):
    torch.manual_seed(0)
    model = create_model('sgconvnext_atto', sg_resize=resize).eval()
    scripted = _script(model)
    with torch.no_grad():
        for size in ((224, 224), (160, 96)):
            x = torch.randn(2, 3, *size)
            assert rel_err(scripted(x), model(x)) < 1e-5
        x = torch.randn(2, 3, 128, 160).contiguous(memory_format=torch.channels_last)  # "auto" runs direct here
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        assert rel_err(_script(model_cl)(x), model_cl(x)) < 1e-5


def test_torchscript_fx_feature_graph_matches_eager():
    model = create_model('sgconvnext_atto', features_only=True, feature_cls='fx', out_indices=(1, 2, 3)).eval()
    scripted = _script(model)
    with torch.no_grad():
        for size in ((224, 224), (160, 96)):
            x = torch.randn(1, 3, *size)
            for a, b in zip(scripted(x), model(x)):
                assert a.shape == b.shape and rel_err(a, b) < 1e-5


@pytest.mark.parametrize('backend', ['auto', 'fft', 'matmul', 'direct'])
def test_torchscript_layer_values_and_gradients(backend):
    torch.manual_seed(0)
    layer = SGConv2d(3, 9, kernel_dim=4, backend=backend).double()
    scripted = _script(layer)
    x = torch.randn(2, 3, 9, 14, dtype=torch.float64, requires_grad=True)
    out, ref = scripted(x), layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, *layer.parameters()], g),
                    torch.autograd.grad(ref, [x, *layer.parameters()], g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(Exception, match='4-D'):  # the scripted layer still checks its input
        scripted(torch.randn(3, 9, 14, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------- ONNX

def _onnx_round_trip(model, path, dynamo, size=64):
    ort = pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of the legacy exporter: sizes become constants, as meant
        if dynamo:
            pytest.importorskip('onnxscript')
            torch.onnx.export(model, (x,), path, input_names=['x'], output_names=['logits'], dynamo=True,
                              dynamic_shapes={'x': {0: torch.export.Dim('batch')}})
        else:
            torch.onnx.export(model, (x,), path, input_names=['x'], output_names=['logits'], dynamo=False,
                              opset_version=17, dynamic_axes={'x': {0: 'batch'}, 'logits': {0: 'batch'}})
    opset = {o.domain: o.version for o in onnx.load(path).opset_import}['']
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch in (1, 5):  # neither is the batch of the export
        xb = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            reference = model(xb)
        out = torch.from_numpy(session.run(None, {'x': xb.numpy()})[0])
        assert out.shape == reference.shape and rel_err(out, reference) < 1e-4, (batch, rel_err(out, reference))
    return opset


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['auto', 'fft'])
def test_onnx_legacy_exporter_dynamic_batch(tmp_path, backend):
    torch.manual_seed(0)
    model = create_model('sgconvnext_atto', img_size=64, sg_backend=backend).eval()
    assert _onnx_round_trip(model, str(tmp_path / 'm.onnx'), dynamo=False) == 17


@pytest.mark.slow
def test_onnx_dynamo_exporter_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = create_model('sgconvnext_atto', img_size=48, sg_backend='fft', **ONE_BLOCK).eval()
    assert _onnx_round_trip(model, str(tmp_path / 'm.onnx'), dynamo=True) >= 17


def test_onnx_export_runs_matmul_whatever_the_backend(monkeypatch):
    ran = []
    import sgconvnext.sgconv as sgconv_module
    real = sgconv_module.toeplitz_conv2d
    monkeypatch.setattr(sgconv_module, 'toeplitz_conv2d', lambda *a: ran.append(1) or real(*a))
    monkeypatch.setattr(sgconv_module, 'exporting_onnx', lambda: True)
    for backend in ('fft', 'direct'):
        layer = SGConv2d(32, 6, backend=backend).eval()  # 32 channels: "direct" runs its convolutions on CPU
        x = torch.randn(1, 32, 6, 6)
        with torch.no_grad():
            out = layer(x)
        monkeypatch.setattr(sgconv_module, 'exporting_onnx', lambda: False)
        with torch.no_grad():
            torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-6)
        monkeypatch.setattr(sgconv_module, 'exporting_onnx', lambda: True)
    assert len(ran) == 2


# ------------------------------------------------------------------------------------------------- torch.compile

@pytest.mark.slow
def test_torch_compile_inference_and_a_training_step_match_eager():
    torch.manual_seed(0)
    model = create_model('sgconvnext_atto', num_classes=5, img_size=64, **ONE_BLOCK)
    x, y = torch.randn(2, 3, 64, 48), torch.randint(0, 5, (2,))  # 48: the W kernels are stretched
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend='aot_eager', fullgraph=True)  # one graph: no break in our code
    model.eval(), twin.eval()
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
    model.train(), twin.train()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (model, twin)]
    for m, optimizer in ((model, optimizers[0]), (compiled, optimizers[1])):
        F.cross_entropy(m(x), y).backward()
        optimizer.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert rel_err(q, p) < 1e-5, name
        assert rel_err(q.grad, p.grad) < 1e-4 or p.grad.abs().max() < 1e-12, name
