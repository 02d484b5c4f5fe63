"""fused.py: K networks as one (grouped convolutions, batched heads) and per-copy optimisers, step
for step equal to torch's in fp64."""
import pytest
import torch

import fused
from model import build_model


@pytest.mark.parametrize("name", ["cnn", "resnet8", "simplecnn"])
def test_fused_forward_equals_each_model(name):
    """Stacked weights, grouped convs, per-copy BN, shortcut padding and heads: copy k of the fused
    output is model k's output, in train mode (batch statistics) and eval mode."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(name, 4, 2, bn=name == "simplecnn"))
    net = fused.fuse(models)
    assert sum(p.numel() for p in net.parameters()) == 3 * sum(p.numel() for p in models[0].parameters())
    x = torch.randn(6, 3, 3, 32, 32)
    for mode in (True, False):
        out = net.train(mode)(x.reshape(6, 9, 32, 32))
        for k, m in enumerate(models):
            torch.testing.assert_close(out[:, k], m.train(mode)(x[:, k]), rtol=1e-5, atol=1e-6)
    for k, m in enumerate(models):  # running statistics too, and the way back
        state = fused.copy_state(net, m, k)
        for key, value in m.state_dict().items():
            torch.testing.assert_close(state[key], value)


def test_a_layer_without_a_fused_form_is_refused():
    models = [torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()) for _ in range(2)]
    with pytest.raises(TypeError, match="cannot fuse Dropout"):
        fused.fuse(models)


# fp64 convolutions have no fast CPU kernel: the cnn alone is fast enough to run while working
@pytest.mark.parametrize("name", ["cnn", pytest.param("resnet8", marks=pytest.mark.slow),
                                  pytest.param("simplecnn", marks=pytest.mark.slow)])
def test_fused_sgd_steps_equal_torch_sgd_in_fp64(name):
    """Eight steps of the fused network + FusedSGD (each copy its own lr, momentum, weight decay)
    against each model with torch.optim.SGD; a copy marked dead is frozen bit for bit even when
    its gradient is NaN."""
    hps = [(0.1, 0.9, 5e-4), (0.03, 0.0, 0.0), (0.2, 0.5, 1e-2)]
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(name, 4, 1, bn=name == "simplecnn").double())
    net, head = fused.fuse(models), "fc.weight" if name == "resnet8" else "head.weight"
    opt = fused.FusedSGD(net, *zip(*hps))
    refs = [torch.optim.SGD(m.parameters(), lr=lr, momentum=mom, weight_decay=wd)
            for m, (lr, mom, wd) in zip(models, hps)]
    generator = torch.Generator().manual_seed(0)
    for step in range(8):
        x = torch.rand(32, 3, 3, 32, 32, dtype=torch.float64, generator=generator)
        y = torch.randint(0, 10, (32, 3), generator=generator)
        losses = fused.per_copy_loss(net(x.reshape(32, 9, 32, 32)), y)
        opt.zero_grad()
        torch.where(opt.alive, losses, 0.0).sum().backward()
        if step == 4:  # copy 2 "diverges": its gradient is NaN, and it is frozen from now on
            opt.freeze(2)
            frozen = fused.split_copies(net.state_dict()[head], 3)[2].clone()
            for p in opt.params:
                fused.split_copies(p.grad, 3)[2] = float("nan")
        opt.step()
        for k, (m, ref) in enumerate(zip(models, refs)):
            if k == 2 and step >= 4:
                continue
            ref.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x[:, k]), y[:, k])
            loss.backward()
            ref.step()
            assert losses[k].item() == pytest.approx(loss.item(), abs=1e-12)
    for k in (0, 1):
        for key, value in fused.copy_state(net, models[k], k).items():
            torch.testing.assert_close(value, models[k].state_dict()[key], rtol=1e-10, atol=1e-12)
    assert torch.equal(fused.split_copies(net.state_dict()[head], 3)[2], frozen)


def test_fused_adamw_steps_equal_torch_adamw_in_fp64():
    hps = [(1e-3, 5e-4), (3e-3, 0.0), (1e-2, 1e-1)]  # (lr, weight decay) per copy
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model("resnet8", 4, 1).double())
    net = fused.fuse(models)
    opt = fused.FusedAdamW(net, [lr for lr, _ in hps], [wd for _, wd in hps], (0.9, 0.99))
    refs = [torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.99))
            for m, (lr, wd) in zip(models, hps)]
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        x = torch.rand(16, 3, 3, 32, 32, dtype=torch.float64, generator=generator)
        y = torch.randint(0, 10, (16, 3), generator=generator)
        opt.zero_grad()
        fused.per_copy_loss(net(x.reshape(16, 9, 32, 32)), y).sum().backward()
        opt.step()
        for k, (m, ref) in enumerate(zip(models, refs)):
            ref.zero_grad()
            torch.nn.functional.cross_entropy(m(x[:, k]), y[:, k]).backward()
            ref.step()
    for k, (m, ref) in enumerate(zip(models, refs)):
        for key, value in fused.copy_state(net, m, k).items():
            torch.testing.assert_close(value, m.state_dict()[key], rtol=1e-9, atol=1e-11)
        for p, state in zip(m.parameters(), opt.copy_state(k)):  # checkpoints in torch's format
            torch.testing.assert_close(state["exp_avg_sq"].reshape(p.shape), ref.state[p]["exp_avg_sq"])
            assert float(state["step"]) == float(ref.state[p]["step"]) == 6
