"""Networks for the scaling study, and their size N and cost in FLOPs without training.

The brief's CNN (seed document 000): three stages of `depth` ConvBlocks at width, 2*width and
4*width channels, MaxPool2d(2) after stages 1 and 2, global average pool, Linear(4*width -> 10).
ConvBlock = Conv3x3(padding 1, with bias, as nn.Conv2d defaults) + BatchNorm2d + ReLU.

    python model.py --width 32 --depth 2      # prints N and forward FLOPs per image
"""
import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10, channels first
NUM_STAGES = 3


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class GlobalAvgPool(nn.Module):
    """AdaptiveAvgPool2d(1) + flatten. Written as a mean because CUDA's adaptive-pool backward is
    flagged non-deterministic by torch.use_deterministic_algorithms; the mean is not."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class ScalingCNN(nn.Module):
    """The brief's 3-stage CNN; `features(x)` returns the pooled 4*width-dim representation."""

    def __init__(self, width: int = 32, depth: int = 2, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, c_in = [], IMAGE_SHAPE[0]
        for stage in range(NUM_STAGES):
            c_out = width * 2 ** stage
            layers += [conv_block(c_in if i == 0 else c_out, c_out) for i in range(depth)]
            if stage < NUM_STAGES - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.body = nn.Sequential(*layers, GlobalAvgPool())
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


# name -> factory(width, depth). Every model of the lab takes the same two size knobs, so any of
# them can join a width or depth sweep.
MODELS = {"cnn": ScalingCNN}


def build_model(name: str = "cnn", width: int = 32, depth: int = 2) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](width=width, depth=depth)


def count_params(model: nn.Module) -> int:
    """N as the brief defines it: trainable parameters only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_block_params(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + c_out + 2 * c_out  # 3x3 conv weight + bias, BN gamma + beta


def cnn_num_params(width: int, depth: int) -> int:
    """Closed-form N of ScalingCNN, so sweeps can plan without building models."""
    n, c_in = 0, IMAGE_SHAPE[0]
    for stage in range(NUM_STAGES):
        c = width * 2 ** stage
        n += conv_block_params(c_in, c) + (depth - 1) * conv_block_params(c, c)
        c_in = c
    return n + c_in * NUM_CLASSES + NUM_CLASSES


def forward_flops_per_image(model: nn.Module) -> int:
    """Forward FLOPs for one image as torch's FlopCounterMode counts them (conv and matmul only,
    a multiply-add = 2 FLOPs). no_grad, not inference_mode: the counter reads 0 under the latter."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *IMAGE_SHAPE, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def main():
    parser = argparse.ArgumentParser(description="Report N and FLOPs of a model without training.")
    parser.add_argument("--model", default="cnn", choices=sorted(MODELS))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()
    model = build_model(args.model, args.width, args.depth)
    print(f"{args.model} width={args.width} depth={args.depth}: N={count_params(model):,} "
          f"forward_flops_per_image={forward_flops_per_image(model):,}")


if __name__ == "__main__":
    main()
