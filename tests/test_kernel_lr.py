"""--sg-kernel-lr-scale (sgconvnext/training/optim.py): the SGConv kernel parameters in their own optimizer group,
whose LR timm's schedulers keep at S x the schedule's; every other parameter as timm's factory groups it."""
import pytest
import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import sgconvnext  # noqa: F401
from sgconvnext import SGConv2d
from sgconvnext.training.config import CLIError, parse_args
from sgconvnext.training.optim import base_lr, create_optimizer


def args_for(*flags):
    return parse_args(['--data-dir', '.', '--opt', 'adamw', '--lr', '1e-3', '--weight-decay', '0.05', *flags])[0]


def kernels_of(model):
    return {id(p) for m in model.modules() if isinstance(m, SGConv2d) for p in (m.kernel_h.weight, m.kernel_w.weight)}


def test_the_kernels_learn_at_their_own_scale_through_the_schedule():
    model = timm.create_model('sgconvnext_atto', img_size=64)
    optimizer = create_optimizer(args_for('--sg-kernel-lr-scale', '10'), model)
    kernel_groups = [g for g in optimizer.param_groups if any(id(p) in kernels_of(model) for p in g['params'])]
    assert len(kernel_groups) == 1 and {id(p) for p in kernel_groups[0]['params']} == kernels_of(model)
    group = kernel_groups[0]
    assert (group['lr'], group['lr_scale'], group['weight_decay']) == (pytest.approx(1e-2), 10.0, 0.0)
    # the other parameters: timm's own groups (decay / no decay) with the kernels taken out
    reference = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    ours = {(g['weight_decay'], frozenset(id(p) for p in g['params'])) for g in optimizer.param_groups
            if g is not group}
    theirs = {(g['weight_decay'], frozenset(id(p) for p in g['params']) - kernels_of(model))
              for g in reference.param_groups}
    assert ours == theirs
    scheduler, _ = create_scheduler_v2(optimizer, 'cosine', num_epochs=4, warmup_epochs=1, warmup_lr=1e-5)
    for epoch in range(4):
        scheduler.step(epoch)
        lrs = {id(g): g['lr'] for g in optimizer.param_groups}
        assert lrs[id(group)] == pytest.approx(10 * base_lr(optimizer))
        assert all(lr == pytest.approx(base_lr(optimizer)) for k, lr in lrs.items() if k != id(group))


def test_the_default_is_timms_optimizer():
    model = timm.create_model('sgconvnext_atto', img_size=64)
    ours, theirs = create_optimizer(args_for(), model), create_optimizer_v2(model, opt='adamw', lr=1e-3,
                                                                            weight_decay=0.05)
    def groups(optimizer):
        return [(g['weight_decay'], g['lr'], [id(p) for p in g['params']]) for g in optimizer.param_groups]
    assert groups(ours) == groups(theirs) and type(ours) is type(theirs)


def test_bad_uses_are_refused():
    with pytest.raises(CLIError, match='needs an sgconvnext model'):
        create_optimizer(args_for('--sg-kernel-lr-scale', '10'), timm.create_model('convnext_atto'))
    model = timm.create_model('sgconvnext_atto', img_size=64)
    with pytest.raises(CLIError, match='must be > 0, got -1'):
        create_optimizer(args_for('--sg-kernel-lr-scale', '-1'), model)
    with pytest.raises(CLIError, match='--layer-decay'):
        create_optimizer(args_for('--sg-kernel-lr-scale', '10', '--layer-decay', '0.8'), model)


def test_an_update_moves_the_kernels_by_the_scaled_step():
    """AdamW's first step moves every parameter by about its LR: the kernels' by 10x the others'."""
    torch.manual_seed(0)
    model = timm.create_model('sgconvnext_atto', img_size=32, num_classes=3)
    for stage in model.stages:  # layer scale 1e-6 at init leaves gradients under Adam's eps
        for block in stage.blocks:
            block.gamma.data.fill_(1.0)
    optimizer = create_optimizer(args_for('--sg-kernel-lr-scale', '10', '--weight-decay', '0'), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    optimizer.step()
    step = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert step['stages.0.blocks.0.conv_dw.kernel_h.weight'] == pytest.approx(1e-2, rel=1e-3)
    assert step['stages.0.blocks.0.mlp.fc1.weight'] == pytest.approx(1e-3, rel=1e-3)
