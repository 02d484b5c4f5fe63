"""Horizontal fusion: K same-shape trainings as ONE network (HFTA, Wang et al., MLSys 2021).

A 300k-parameter CNN leaves most of a big GPU idle: each step is a few dozen tiny kernels. Fusing
K runs that share a shape gives each kernel K times the work for the same launches. Layout:

- activations are [B, K*C, H, W]: copy k owns channels k*C:(k+1)*C, so a convolution is one
  grouped convolution (groups=K) and a BatchNorm over K*C channels gives every copy exactly its
  own batch statistics and running statistics; ReLU and pooling act per channel anyway;
- after pooling or flattening, features are [B, K, F] and every Linear is a batched matmul with
  weights [K, out, in]; logits are [B, K, 10] and labels [B, K];
- every fused tensor is its K copies stacked along its first dim (`split_copies(t, K)[k]` is
  copy k's), so the fused state_dict has the ordinary keys and converts both ways
  (`fused_state`, `copy_state`).

Each copy is built by model.build_model under its own seed and copied in, so its initialisation
is train.py's. `FusedSGD` and `FusedAdamW` apply each copy's lr (momentum) and weight decay to its
slices, and freeze the slices of copies that are no longer `alive` (diverged): they select, never
multiply, because NaN * 0 is NaN. Their state converts to torch's optimisers' state per copy, so
checkpoints are train.py's.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from model import BasicBlock, GlobalAvgPool


class FusedLinear(nn.Module):
    """K Linear layers as one batched matmul: [B, K, in] -> [B, K, out]."""

    def __init__(self, layers: list):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))  # [K, out, in]
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))      # [K, out]

    def forward(self, x):
        return torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1),
                             self.weight.transpose(1, 2)).transpose(0, 1)


class CopyFlatten(nn.Module):
    """nn.Flatten per copy: [B, K*C, H, W] -> [B, K, C*H*W] in each copy's (c, h, w) order."""

    def __init__(self, copies: int):
        super().__init__()
        self.copies = copies

    def forward(self, x):
        return x.reshape(x.shape[0], self.copies, -1)


class CopyAvgPool(CopyFlatten):
    """GlobalAvgPool per copy: [B, K*C, H, W] -> [B, K, C]."""

    def forward(self, x):
        return super().forward(x.mean(dim=(2, 3)))


class FusedBasicBlock(BasicBlock):
    """BasicBlock of K copies; the option-A shortcut zero-pads each copy's channels, not the end
    of the stacked ones."""

    def __init__(self, block: BasicBlock, copies: int):
        nn.Module.__init__(self)
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.stride, self.extra_channels, self.copies = block.stride, block.extra_channels, copies

    def shortcut(self, x):
        b, kc, h, w = x.shape
        out = super().shortcut(x.reshape(b, self.copies, kc // self.copies, h, w))
        return out.reshape(b, -1, *out.shape[-2:])


def _fuse_module(modules: list, copies: int) -> nn.Module:
    """The fused counterpart of one module of K same-shape networks (containers recursively)."""
    first = modules[0]
    if isinstance(first, nn.Conv2d):
        fused = nn.Conv2d(copies * first.in_channels, copies * first.out_channels,
                          first.kernel_size, first.stride, first.padding, groups=copies,
                          bias=first.bias is not None)
    elif isinstance(first, nn.BatchNorm2d):
        fused = nn.BatchNorm2d(copies * first.num_features, first.eps, first.momentum,
                               first.affine, first.track_running_stats)
    elif isinstance(first, nn.Linear):
        return FusedLinear(modules)
    elif isinstance(first, nn.Flatten):
        return CopyFlatten(copies)
    elif isinstance(first, GlobalAvgPool):
        return CopyAvgPool(copies)
    elif isinstance(first, (nn.ReLU, nn.MaxPool2d)):
        return copy.deepcopy(first)  # per channel: the stacked layout needs nothing
    elif first._parameters or first._buffers:
        raise TypeError(f"cannot fuse {type(first).__name__}: a container with its own tensors")
    elif len(first._modules):
        fused = copy.copy(first)  # same class and attributes, children replaced below
        fused._modules = {name: _fuse_module([m._modules[name] for m in modules], copies)
                          for name in first._modules}
        return FusedBasicBlock(fused, copies) if isinstance(first, BasicBlock) else fused
    else:
        raise TypeError(f"cannot fuse {type(first).__name__}; add it to fused._fuse_module")
    fused.to(first.weight.dtype).load_state_dict(fused_state(fused, [m.state_dict() for m in modules]))
    return fused


def fuse(models: list) -> nn.Module:
    """One network computing the K same-shape `models` side by side: input [B, 3K, 32, 32] (copy
    k's images in channels 3k:3k+3), output [B, K, 10]. Weights and buffers are copied in."""
    first = next(models[0].parameters())
    return _fuse_module(models, len(models)).to(device=first.device, dtype=first.dtype)


def fused_state(fused: nn.Module, states: list) -> dict:
    """The fused state_dict of K ordinary state_dicts (same keys; copies stacked)."""
    target = fused.state_dict()
    return {key: states[0][key] if t.dim() == 0 else  # num_batches_tracked: one count for all
            torch.stack([s[key] for s in states]).reshape(t.shape) for key, t in target.items()}


def copy_state(fused: nn.Module, template: nn.Module, k: int) -> dict:
    """Copy k's ordinary state_dict (shapes of `template`, an ordinary model) out of `fused`."""
    K, shapes = fused_copies(fused), {key: t.shape for key, t in template.state_dict().items()}
    return {key: t.detach().clone() if t.dim() == 0 else
            split_copies(t.detach(), K)[k].reshape(shapes[key]).clone()
            for key, t in fused.state_dict().items()}


def fused_copies(fused: nn.Module) -> int:
    """K, read off the first batched Linear (every fused network ends in one)."""
    return next(m for m in fused.modules() if isinstance(m, FusedLinear)).weight.shape[0]


def per_copy_loss(logits, labels, reduction="mean"):
    """Cross-entropy of each copy: logits [B, K, classes], labels [B, K] -> [K] (mean or sum
    over the batch, as train.py's F.cross_entropy)."""
    losses = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # [B, K]
    return losses.mean(0) if reduction == "mean" else losses.sum(0)


def params_finite(fused: nn.Module) -> torch.Tensor:
    """[K] bool: every parameter of copy k is finite. One isfinite over the flattened parameters
    (per copy), on the device."""
    K = fused_copies(fused)
    flat = torch.cat([p.detach().reshape(K, -1) for p in fused.parameters()], dim=1)
    return torch.isfinite(flat).all(dim=1)


def split_copies(t: torch.Tensor, copies: int) -> torch.Tensor:
    """View a fused tensor [K*C, ...] or [K, ...] as [K, C, ...]: splitting the outer dim is a
    view for any memory format (channels_last included)."""
    return t.view(copies, t.shape[0] // copies, *t.shape[1:])


class FusedOptimizer:
    """Per-copy optimiser over a fused network's parameters, written with torch's multi-tensor
    (_foreach) kernels over every live copy's slice of every parameter: a handful of launches per
    step whatever the number of parameters, each slice with its copy's lr and weight decay as a
    scalar. As torch's optimisers have a param group per set of parameters, this one has one per
    copy: the training loop sets copy k's lr in param_groups[k]. A frozen copy (diverged) is left
    out of the lists, so its weights and state stay as they were (never multiplied by 0: NaN * 0
    is NaN). STATE names the per-param tensors as torch's optimiser of the same rule names them in
    its state_dict."""
    STATE = ()

    def __init__(self, fused: nn.Module, lrs, weight_decays):
        self.params = [p for p in fused.parameters() if p.requires_grad]
        self.K = fused_copies(fused)
        self.param_groups = [dict(lr=lr) for lr in lrs]
        self.weight_decay = [float(v) for v in weight_decays]
        self.state = {name: [torch.zeros_like(p) for p in self.params] for name in self.STATE}
        self.alive = torch.ones(self.K, dtype=torch.bool, device=self.params[0].device)  # loss mask
        self.live = list(range(self.K))
        self.steps = 0

    @property
    def lr(self) -> list:
        return [float(group["lr"]) for group in self.param_groups]

    def freeze(self, k: int) -> None:
        self.alive[k] = False
        self.live = [j for j in self.live if j != k]

    def zero_grad(self, set_to_none=True):  # torch.optim's signature; always to None
        for p in self.params:
            p.grad = None

    def slices(self, tensors: list) -> list:
        """The live copies' slices of `tensors`, copy by copy (views: updates land in place)."""
        return [split_copies(t, self.K)[k] for k in self.live for t in tensors]

    def per_slice(self, values: list) -> list:
        """One scalar per slice of `slices`: its copy's value."""
        return [values[k] for k in self.live for _ in self.params]

    @torch.no_grad()
    def step(self):
        self.steps += 1
        if self.live:
            self.update(self.slices(self.params), self.slices([p.grad for p in self.params]),
                        **{name: self.slices(self.state[name]) for name in self.STATE})

    def copy_state(self, k: int) -> list:
        """Copy k's state per parameter, in torch's optimiser's format (one dict per param)."""
        return [{**{name: split_copies(self.state[name][i], self.K)[k].clone() for name in self.STATE},
                 **self.extra_state()} for i in range(len(self.params))]

    def load_state(self, k: int, states: list) -> None:
        """Copy k's state from torch's format; a param without state (a fresh run) keeps 0."""
        for i, state in enumerate(states):
            for name in self.STATE:
                if state.get(name) is not None:
                    target = split_copies(self.state[name][i], self.K)[k]
                    target.copy_(state[name].reshape(target.shape))
            if "step" in state:
                self.steps = int(float(state["step"]))

    def extra_state(self) -> dict:
        return {}


class FusedSGD(FusedOptimizer):
    """torch.optim.SGD (momentum, coupled weight decay, no dampening or Nesterov) with each copy's
    momentum too. Buffers start at 0: momentum * 0 + g is SGD's first-step buffer g."""
    STATE = ("momentum_buffer",)

    def __init__(self, fused: nn.Module, lrs, momenta, weight_decays):
        super().__init__(fused, lrs, weight_decays)
        self.momentum = [float(v) for v in momenta]

    def update(self, w, g, momentum_buffer):
        d = torch._foreach_mul(w, self.per_slice(self.weight_decay))
        torch._foreach_add_(d, g)                                  # g + wd * w
        torch._foreach_mul_(momentum_buffer, self.per_slice(self.momentum))
        torch._foreach_add_(momentum_buffer, d)                    # buf = momentum * buf + d
        torch._foreach_sub_(w, torch._foreach_mul(momentum_buffer, self.per_slice(self.lr)))


class FusedAdamW(FusedOptimizer):
    """torch.optim.AdamW (decoupled weight decay, bias-corrected moments), op for op as torch's
    single-tensor AdamW, each copy its own lr and weight decay; betas and eps shared by the
    bundle (bundle_key keeps betas equal)."""
    STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, fused: nn.Module, lrs, weight_decays, betas, eps=1e-8):
        super().__init__(fused, lrs, weight_decays)
        self.betas, self.eps = betas, eps

    def update(self, w, g, exp_avg, exp_avg_sq):
        beta1, beta2 = self.betas
        lr = self.per_slice(self.lr)
        torch._foreach_mul_(w, [1 - a * b for a, b in zip(lr, self.per_slice(self.weight_decay))])
        torch._foreach_lerp_(exp_avg, g, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - beta2 ** self.steps) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(w, exp_avg, denom, [-a / (1 - beta1 ** self.steps) for a in lr])

    def extra_state(self) -> dict:
        return dict(step=torch.tensor(float(self.steps)))


def make_optimizer(fused: nn.Module, cfgs: list) -> FusedOptimizer:
    """The fused counterpart of train.make_optimizer for the copies' configurations."""
    lrs, weight_decays = [c.lr for c in cfgs], [c.weight_decay for c in cfgs]
    if cfgs[0].optimizer == "adamw":
        return FusedAdamW(fused, lrs, weight_decays, cfgs[0].betas)
    return FusedSGD(fused, lrs, [c.momentum for c in cfgs], weight_decays)
