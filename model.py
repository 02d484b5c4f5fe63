"""Networks of the lab, and their size N and cost in FLOPs without training.

Every network takes the same two size knobs, `width` (channels of the first stage; stage s has
width*2**s) and `depth` (blocks per stage), so any of them can join a width or depth sweep, and
has `features(x)`, the pooled representation the classifier reads.

- cnn (the scaling study's network): three stages of `depth` ConvBlocks, MaxPool2d(2)
  after stages 1 and 2, global average pool, Linear(4*width -> 10). ConvBlock = Conv3x3(padding 1,
  with bias, as nn.Conv2d defaults) + BatchNorm2d + ReLU.
- resnet8 (the ResNet-8 SGD-vs-AdamW study): He et al.'s CIFAR ResNet (6n+2 layers, n = depth):
  a 3x3 conv, three stages of `depth` BasicBlocks (two 3x3 convs, BatchNorm, identity
  shortcut), the 2nd and 3rd stage starting with stride 2, global average pool, fc. At width 16,
  depth 1 it is ResNet-8
  (8 weighted layers). Shortcuts that change shape subsample and zero-pad channels (He et al.'s
  option A), so they add no weighted layer and no parameter.
- simplecnn (the CPU speedrun): three stages of `depth` Conv3x3 (+ optional
  BatchNorm) + ReLU, each followed by MaxPool2d(2), then flatten -> Linear(16*4*width ->
  8*width) -> ReLU -> Linear(-> 10). The CPU speedrun names no exact architecture; this is the
  conventional small conv-pool-fc network it describes, without BatchNorm unless `bn`.

    python model.py --width 32 --depth 2      # prints N and forward FLOPs per image
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("model.py")

import os  # noqa: E402 (after the guard above: loading torch takes a second or more)

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from utils import ArgumentParser

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10, channels first
NUM_STAGES = 3
MAX_BUILT_DEPTH = 1_000  # model.py builds shapes up to this depth to count FLOPs (seconds)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) with the same values and gradients, sooner on a CPU core, where ATen's
    channels-first kernel (one window at a time, finding each window's index) took 14-23% of a
    training step and a third of an evaluation at the pocket study's sizes (torch.profiler):

    - no gradient wanted (evaluation): the largest of the input's four strided quarters, the same
      value, NaN where a window holds one (of a tie between -0.0 and +0.0 it may keep the other
      zero, which changes no later value); 3-6x sooner;
    - training, from CHANNELS_LAST_POOL_FROM channels: ATen's own kernel on a channels_last copy
      (vectorised over channels), then ATen's channels-first backward: the same values and
      indices bit for bit (ties and NaN included), so the same gradients; 1.3-2.6x sooner at 4-48
      channels, slower at 2-3.
    GPUs, torch.compile and channels_last inputs (whose ATen kernel is the fast one) keep ATen's."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x):
        if x.device.type != "cpu" or not x.is_contiguous() or x.dim() != 4 \
                or x.shape[-1] % 2 or x.shape[-2] % 2 or torch.compiler.is_compiling():
            return super().forward(x)
        if not torch.is_grad_enabled():
            top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
            return torch.maximum(top, torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))
        if x.shape[1] >= CHANNELS_LAST_POOL_FROM:
            return ChannelsLastMaxPool.apply(x)
        return super().forward(x)


CHANNELS_LAST_POOL_FROM = 4  # channels; measured on one core of a 2-core Intel Xeon (AVX-512)
POOL_ARGS = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # kernel, stride, padding, dilation, ceil


class ChannelsLastMaxPool(torch.autograd.Function):
    """max_pool2d(x, 2) of a channels-first x through ATen's channels_last kernel."""

    @staticmethod
    def forward(ctx, x):
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), *POOL_ARGS[:2])
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *POOL_ARGS,
                                                               indices)


class GlobalAvgPool(nn.Module):
    """AdaptiveAvgPool2d(1) + flatten. Written as a mean because CUDA's adaptive-pool backward is
    flagged non-deterministic by torch.use_deterministic_algorithms; the mean is not."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class ScalingCNN(nn.Module):
    """The scaling study's 3-stage CNN; `features(x)` returns the pooled 4*width-dim representation."""

    def __init__(self, width: int = 32, depth: int = 2, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, c_in = [], IMAGE_SHAPE[0]
        for stage in range(NUM_STAGES):
            c_out = width * 2 ** stage
            layers += [conv_block(c_in if i == 0 else c_out, c_out) for i in range(depth)]
            if stage < NUM_STAGES - 1:
                layers.append(MaxPool2x2())
            c_in = c_out
        self.body = nn.Sequential(*layers, GlobalAvgPool())
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU after the sum with the shortcut (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra_channels = stride, c_out - c_in

    def shortcut(self, x):
        if self.stride > 1:  # x[..., h, w]: also fused.py's [B, K, C, H, W]
            x = x[..., ::self.stride, ::self.stride]
        if self.extra_channels:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with 6*depth+2 layers; width 16, depth 1 is ResNet-8."""

    def __init__(self, width: int = 16, depth: int = 1, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(IMAGE_SHAPE[0], width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks, c_in = [], width
        for stage in range(NUM_STAGES):
            c_out = width * 2 ** stage
            for i in range(depth):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(c_in, num_classes)

    def features(self, x):
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x):
        return self.fc(self.features(x))


class SimpleCNN(nn.Module):
    """Conv-pool stages and a two-layer classifier, BatchNorm only with `bn` (the CPU speedrun)."""

    def __init__(self, width: int = 32, depth: int = 1, bn: bool = False,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, c_in = [], IMAGE_SHAPE[0]
        for stage in range(NUM_STAGES):
            c_out = width * 2 ** stage
            for i in range(depth):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1)]
                layers += [nn.BatchNorm2d(c_out)] if bn else []
                layers += [nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(MaxPool2x2())
        side = IMAGE_SHAPE[1] // 2 ** NUM_STAGES
        self.body = nn.Sequential(*layers, nn.Flatten(),
                                  nn.Linear(c_in * side * side, 8 * width), nn.ReLU(inplace=True))
        self.head = nn.Linear(8 * width, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


# name -> (factory, default width, default depth). `bn` is simplecnn's switch; the others always
# have BatchNorm.
MODELS = {"cnn": (ScalingCNN, 32, 2), "resnet8": (ResNet, 16, 1), "simplecnn": (SimpleCNN, 32, 1)}


def build_model(name: str = "cnn", width: int = 32, depth: int = 2, bn: bool = False) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if bn and name != "simplecnn":
        raise ValueError(f"bn is a switch of simplecnn only; {name} always has BatchNorm")
    options = dict(bn=bn) if name == "simplecnn" else {}
    return MODELS[name][0](width=width, depth=depth, **options)


def count_params(model: nn.Module) -> int:
    """N as the scaling study defines it: trainable parameters only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_params(c_in: int, c_out: int, bias: bool = True, bn: bool = True) -> int:
    return 9 * c_in * c_out + c_out * bias + 2 * c_out * bn  # 3x3 weight, bias, BN gamma + beta


def stage_channels(width: int, depth: int, first: int = IMAGE_SHAPE[0]):
    """(c_in, c_out, count) of the NUM_STAGES * depth 3x3 convs of a plain stack: each stage's
    first conv, then its depth - 1 repeats (counted, not listed: any depth costs O(stages))."""
    groups, c_in = [], first
    for stage in range(NUM_STAGES):
        c_out = width * 2 ** stage
        groups += [(c_in, c_out, 1), (c_out, c_out, depth - 1)]
        c_in = c_out
    return groups


def cnn_num_params(width: int, depth: int) -> int:
    """Closed-form N of ScalingCNN, so sweeps can plan without building models."""
    convs = sum(k * conv_params(a, b) for a, b, k in stage_channels(width, depth))
    return convs + 4 * width * NUM_CLASSES + NUM_CLASSES


def resnet_num_params(width: int, depth: int) -> int:
    """Closed-form N of ResNet: the stem, two convs per block (no bias), the fc."""
    convs = sum(k * (conv_params(a, b, bias=False) + conv_params(b, b, bias=False))
                for a, b, k in stage_channels(width, depth, first=width))
    stem = conv_params(IMAGE_SHAPE[0], width, bias=False)
    return stem + convs + 4 * width * NUM_CLASSES + NUM_CLASSES


def simplecnn_num_params(width: int, depth: int, bn: bool = False) -> int:
    convs = sum(k * conv_params(a, b, bn=bn) for a, b, k in stage_channels(width, depth))
    flat = 4 * width * (IMAGE_SHAPE[1] // 2 ** NUM_STAGES) ** 2
    return convs + flat * 8 * width + 8 * width + 8 * width * NUM_CLASSES + NUM_CLASSES


def num_params(name: str, width: int, depth: int, bn: bool = False) -> int:
    """Closed-form N of any model of the lab (equal to count_params of the built model; tested)."""
    if name == "simplecnn":
        return simplecnn_num_params(width, depth, bn)
    return {"cnn": cnn_num_params, "resnet8": resnet_num_params}[name](width, depth)


def size_error(name: str, width: int, depth: int, bn: bool = False) -> str:
    """Why a network cannot be built on this machine ("" if it can): its weights, gradients and
    optimizer state (4 copies of N floats) must fit in the host's memory, checked from the
    closed-form N before anything is allocated (torch would otherwise overflow or hang)."""
    return memory_error(f"{name} width {width:,} depth {depth:,}",
                        num_params(name, width, depth, bn), "--width or --depth")


def memory_error(what: str, N: int, flags: str) -> str:
    """"" if N parameters train in the host's memory (weights, gradients and two optimizer states:
    16 bytes each), else why not, naming the flags to shrink."""
    need = 16 * N
    if need <= host_memory_bytes():
        return ""
    return (f"{what} has N={N:,} parameters ({need / 2**30:,.0f} GiB for weights, gradients and "
            f"optimizer state), more than this machine's {host_memory_bytes() / 2**30:,.0f} GiB; "
            f"use a smaller {flags}")


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
    parser = ArgumentParser(description="Report N and FLOPs of a model without training.")
    parser.add_argument("--model", default="cnn", choices=sorted(MODELS))
    parser.add_argument("--width", type=int, default=None, help="default: the model's (32, 16, 32)")
    parser.add_argument("--depth", type=int, default=None, help="default: the model's (2, 1, 1)")
    parser.add_argument("--bn", action="store_true", help="BatchNorm in simplecnn")
    args = parser.parse_args()
    _, width, depth = MODELS[args.model]
    args.width = width if args.width is None else args.width
    args.depth = depth if args.depth is None else args.depth
    for name in ("width", "depth"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.bn and args.model != "simplecnn":
        parser.error(f"--bn is a switch of --model simplecnn; {args.model} always has BatchNorm")
    if args.depth > MAX_BUILT_DEPTH or args.width * 2 ** (NUM_STAGES + 2) > 2 ** 31:
        N = num_params(args.model, args.width, args.depth, args.bn)
        print(f"{args.model} width={args.width} depth={args.depth}: N={N:,} (closed form; too large "
              f"to build even as shapes, so forward FLOPs are not counted)")
        return
    with torch.device("meta"):  # shapes only: any size is counted without allocating it
        model = build_model(args.model, args.width, args.depth, args.bn)
    print(f"{args.model} width={args.width} depth={args.depth}: N={count_params(model):,} "
          f"forward_flops_per_image={forward_flops_per_image(model):,}")


if __name__ == "__main__":
    main()
