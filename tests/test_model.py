import pytest
import torch
from torch import nn

from model import (MODELS, NUM_CLASSES, ScalingCNN, build_model, cnn_num_params, count_params,
                   forward_flops_per_image)

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


def test_structure_follows_the_brief():
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
