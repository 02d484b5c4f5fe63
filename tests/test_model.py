"""model.py: shapes, N counted and in closed form, FLOPs, each network's structure, the pooling
kernels."""
import pytest
import torch
from torch import nn

from model import (MODELS, NUM_CLASSES, ResNet, ScalingCNN, SimpleCNN, build_model,
                   cnn_num_params, count_params, forward_flops_per_image, num_params)
from tiny import says


SIZES = [(1, 1), (4, 1), (4, 3), (8, 2), (32, 2), (48, 4)]


@pytest.mark.parametrize("width,depth", SIZES)
def test_shapes(width, depth):
    model = ScalingCNN(width, depth)
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, NUM_CLASSES)
    assert model.features(x).shape == (3, 4 * width)


@pytest.mark.parametrize("width,depth", SIZES)
def test_closed_form_N_equals_counted(width, depth):
    assert cnn_num_params(width, depth) == count_params(ScalingCNN(width, depth))


def test_structure_follows_the_scaling_recipe():
    model = ScalingCNN(width=8, depth=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8] * 3 + [16] * 3 + [32] * 3
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 9
    assert model.head.in_features == 32


def test_frozen_parameters_are_not_counted():
    model = ScalingCNN(4, 1)
    model.head.weight.requires_grad_(False)
    assert count_params(model) == cnn_num_params(4, 1) - model.head.weight.numel()


@pytest.mark.parametrize("width,depth", [(4, 1), (8, 2)])
def test_flops_match_hand_count(width, depth):
    """2 FLOPs per multiply-add of every conv at its resolution (32, 16, 8) and of the head."""
    expected, c_in = 0, 3
    for stage, side in enumerate([32, 16, 8]):
        c = width * 2 ** stage
        for i in range(depth):
            expected += 2 * 9 * (c_in if i == 0 else c) * c * side * side
        c_in = c
    expected += 2 * c_in * NUM_CLASSES
    assert forward_flops_per_image(ScalingCNN(width, depth)) == expected


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 4, 1)
    assert "cnn" in MODELS


ALL_MODELS = [(name, w, d, bn) for name in MODELS for w, d in [(4, 1), (8, 2), (16, 1)]
              for bn in ([False, True] if name == "simplecnn" else [False])]


@pytest.mark.parametrize("name,width,depth,bn", ALL_MODELS)
def test_every_model_shapes_and_closed_form_N(name, width, depth, bn):
    model = build_model(name, width, depth, bn)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, NUM_CLASSES)
    assert model.features(x).ndim == 2
    assert num_params(name, width, depth, bn) == count_params(model)


def weighted_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_resnet8_is_he_et_al_6n_plus_2():
    model = build_model("resnet8", *MODELS["resnet8"][1:])
    assert len(weighted_layers(model)) == 8  # 6n + 2 at n = 1
    assert count_params(model) == 75_290  # option-A shortcuts: no projection parameters
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64]
    assert [c.stride[0] for c in convs] == [1, 1, 1, 2, 1, 2, 1]
    assert all(c.bias is None for c in convs)  # BatchNorm follows every conv
    assert len(weighted_layers(ResNet(16, depth=2))) == 14  # the 2-blocks-per-stage variant
    assert model.fc.in_features == 64


def test_resnet_shortcut_is_identity_where_shapes_match():
    """With zeroed second convs and BN shifts, a block passes relu(shortcut) through: identity in
    place, subsampled and zero-padded where the stage changes."""
    block = ResNet(4, 1).stages[1]  # 4 -> 8 channels, stride 2
    torch.nn.init.zeros_(block.bn2.weight)
    x = torch.rand(1, 4, 8, 8)
    out = block(x)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2]) and torch.equal(out[:, 4:], torch.zeros(1, 4, 4, 4))


def test_intermediate_activations_are_reachable_with_hooks():
    model, seen = ResNet(8, 1), {}
    for name, module in model.stages.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.shape}))
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"0": (2, 8, 32, 32), "1": (2, 16, 16, 16), "2": (2, 32, 8, 8)}


def test_simplecnn_has_batchnorm_only_when_asked():
    plain, with_bn = SimpleCNN(8, 1), SimpleCNN(8, 1, bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in plain.modules()) == 3
    with pytest.raises(ValueError, match="simplecnn"):
        build_model("cnn", 4, 1, bn=True)


def test_cli_refuses_a_zero_width_and_counts_huge_ones_without_memory(monkeypatch, capsys):
    import model
    monkeypatch.setattr("sys.argv", ["model.py", "--width", "0"])
    with pytest.raises(SystemExit) as exit_:  # was: the default model's N, exit 0
        model.main()
    assert exit_.value.code == 2
    says(capsys.readouterr().err, "--width", ">= 1", "0")
    monkeypatch.setattr("sys.argv", ["model.py", "--model", "cnn", "--bn"])
    with pytest.raises(SystemExit) as exit_:  # was: build_model's ValueError traceback
        model.main()
    assert exit_.value.code == 2
    says(capsys.readouterr().err, "--bn", "--model simplecnn")
    monkeypatch.setattr("sys.argv", ["model.py", "--width", "100000", "--depth", "2"])
    model.main()  # 2.8e12 parameters: counted on the meta device, nothing allocated
    assert "N=2,790,010,900,010" in capsys.readouterr().out
    for argv in (["--width", str(2 ** 63 - 1)], ["--depth", str(10 ** 8)]):  # were: an overflow
        monkeypatch.setattr("sys.argv", ["model.py", *argv])  # traceback, a build that never ends
        model.main()
        says(capsys.readouterr().out, "closed form", "too large to build")


def test_closed_form_N_of_any_depth_is_immediate_and_sizes_are_checked_before_building():
    import model
    assert model.cnn_num_params(32, 10 ** 12) > 10 ** 17  # O(stages), not a list of 3e12 convs
    assert model.size_error("cnn", 32, 2) == ""
    for width, depth in ((2 ** 63 - 1, 2), (32, 10 ** 8), (100_000, 2)):
        message = model.size_error("cnn", width, depth)
        says(message, f"{width:,}", f"{depth:,}", "N=", "smaller")


def window_cases():
    """Every 2x2 window over {-1, -0.0, +0.0, 1, nan} (ties, signed zeros, NaNs: 625 windows) and
    a batch of random values, laid out as (N, C, H, W) images."""
    values = torch.tensor([-1.0, -0.0, 0.0, 1.0, float("nan")])
    windows = torch.cartesian_prod(*[values] * 4).view(-1, 1, 2, 2)     # one window per image
    tiled = windows.view(25, 25, 2, 2).permute(0, 2, 1, 3).reshape(1, 1, 50, 50)  # side by side
    return [windows, tiled, torch.randn(4, 6, 8, 10)]


@pytest.mark.parametrize("case", range(3))
def test_quarter_max_pool_gives_aten_max_pools_values(case):
    from model import MaxPool2x2
    x = window_cases()[case]
    with torch.no_grad():
        fast, aten = MaxPool2x2()(x), nn.functional.max_pool2d(x, 2)
    assert ((fast == aten) | (fast.isnan() & aten.isnan())).all()  # -0.0 == 0.0: a sign may differ


def test_evaluation_uses_the_quarter_pool_and_training_atens(monkeypatch):
    torch.manual_seed(0)
    model, x = ScalingCNN(2, 1).eval(), torch.randn(16, 3, 32, 32)  # pools 2 and 4 channels
    aten_calls, aten = [], nn.MaxPool2d.forward
    monkeypatch.setattr(nn.MaxPool2d, "forward", lambda m, x: aten_calls.append(1) or aten(m, x))
    with torch.no_grad():
        fast = model(x)
    assert aten_calls == []
    slow = model(x)  # with gradients: ATen's kernels, which also keep the indices
    assert aten_calls == [1] and torch.equal(fast, slow)  # 2 channels: channels-first; 4: not
    assert isinstance(model.body[1], nn.MaxPool2d)  # fused.py stacks copies of it as it is


@pytest.mark.parametrize("channels", [4, 16])
def test_training_pool_gives_atens_values_indices_and_gradients_bit_for_bit(channels):
    """Every 2x2 window over {-inf, -1, -0.0, +0.0, 1, nan} (1,296), in each channel: the
    channels_last detour must pick the very element ATen's channels-first kernel picks."""
    from model import MaxPool2x2
    values = torch.tensor([float("-inf"), -1.0, -0.0, 0.0, 1.0, float("nan")])
    windows = torch.cartesian_prod(*[values] * 4).view(36, 36, 2, 2)
    image = windows.permute(0, 2, 1, 3).reshape(72, 72)                 # windows side by side
    x = torch.stack([image.roll(c, dims=1) for c in range(channels)])[None].repeat(2, 1, 1, 1)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = MaxPool2x2()(ours), nn.functional.max_pool2d(theirs, 2)
    assert "ChannelsLastMaxPool" in type(out.grad_fn).__name__
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(channels))
    out.backward(grad)
    ref.backward(grad)
    bits = lambda t: t.detach().view(torch.int32)
    assert torch.equal(bits(out), bits(ref)) and torch.equal(bits(ours.grad), bits(theirs.grad))
