"""Model zoo for the benchmark: CIFAR-style ResNets, PreAct-ResNet18, WideResNet-34-10 and a small CPU CNN.

Conventions
-----------
* Inputs are images in [0, 1] and there is NO normalization layer inside any model. The threat model
  (L-inf ball of radius eps, clamp to [0, 1]) is defined in that pixel space, exactly as in the TRADES
  code (yaodongyu/TRADES) and the AFD code (changzhang777/AFD). Putting a mean/std layer in here, or
  normalizing in the data loader, would silently change what "eps = 8/255" means.
* Every model is a :class:`Classifier`: ``features(x)`` returns the last hidden layer (the exact input of
  the final linear layer ``classifier``), and ``forward(x) == classifier(features(x))``. Feature-level
  methods (AFD, RGKD/AFKD, ARREST, AFA) rely on that split; AFD's disentanglers are ``feature_dim``-square.
* Global adaptive average pooling replaces the fixed ``avg_pool2d(out, 4)`` of the reference code, so the
  same network works on 32x32 (CIFAR) and 64x64 (Tiny-ImageNet) inputs. On 32x32 inputs this is identical
  to the reference (the last feature map is 4x4 for ResNets, 8x8 for WRN).

Architectures (re-written from the descriptions of the public code, not copied)
------------------------------------------------------------------------------
* ``resnet18`` / ``resnet50``: CIFAR ResNet of yaodongyu/TRADES ``models/resnet.py`` -- 3x3 stem conv with
  stride 1 and padding 1, no max-pool, BasicBlock [2,2,2,2] / Bottleneck [3,4,6,3], feature_dim 512 / 2048.
  Module names (``layer2.1.conv2`` ...) follow the reference so RiFT's module choices resolve; the head is
  called ``classifier`` instead of ``linear`` (checkpoints with ``linear`` load: bench/core/checkpoints.py).
* ``resnet18_afd``: the AFD code's ResNet18 (changzhang777/AFD ``models/resnet.py``, ``ResNet18``): the same
  network except that its stem conv has padding=0, so a 32x32 image becomes a 30x30 map (then 30, 15, 8, 4
  through the stages; its AdaptiveAvgPool2d makes the head the same). Same parameter names and shapes as
  ``resnet18``, so a checkpoint of one loads into the other without error and is silently a different
  network: name the one the checkpoint was trained as. tests/reference/test_ref_resnet18_afd.py pins it against a
  transcription of the AFD code's definition. ``resnet50_afd`` is the AFD code's ResNet50 (``ResNet50``: the same
  ``ResNet`` class, Bottleneck blocks) the same way; its WideResNet pads like TRADES' (``wrn34_10``).
* ``preact_resnet18``: locuslab/robust_overfitting ``preactresnet.py`` (pre-activation blocks, a final
  BN + ReLU before pooling), feature_dim 512.
* ``wrn34_10``: yaodongyu/TRADES ``models/wideresnet.py`` -- depth 34, widen factor 10, dropout 0,
  widths 16/160/320/640, final BN + ReLU, feature_dim 640. Module names (``block1.layer.3.conv2`` ...)
  follow the reference. The reference also builds an unused ``sub_block1`` (never called in forward);
  we omit it, so its state-dict keys are absent (it has no effect on outputs).
* ``small_cnn``: our own small, fast CNN for CPU runs (~0.46M parameters): four 3x3 conv+BN+ReLU layers
  (32-64-128-256 channels, max-pool after the 2nd and 3rd), global average pooling, then a hidden
  Linear(256, 256) + ReLU whose output is the "last hidden layer" (``features``), then the classifier.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

MODELS: tuple[str, ...] = ("small_cnn", "resnet18", "resnet18_afd", "resnet50", "resnet50_afd", "preact_resnet18",
                           "wrn34_10")


class ModelError(Exception):
    """Raised for an unknown model name or invalid model arguments (one-line message)."""


class Classifier(nn.Module):
    """Base class: a feature extractor followed by one linear layer (with bias).

    Subclasses set ``feature_dim`` and ``classifier`` and implement :meth:`features`.
    """

    feature_dim: int
    classifier: nn.Linear

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        # Defined here once so forward == classifier(features(x)) holds by construction for every model.
        return self.classifier(self.features(x))


def _pool_flatten(out: Tensor) -> Tensor:
    # Adaptive pooling to 1x1 makes the nets resolution-agnostic; flatten (reshape) also copes with
    # channels_last tensors, where a .view would fail.
    return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


# --------------------------------------------------------------------------------------------------
# small_cnn
# --------------------------------------------------------------------------------------------------
class SmallCNN(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(32, 64, 128, 256), hidden: int = 256):
        super().__init__()

        def conv_bn(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
            # bias=False: the following BatchNorm has its own shift, a conv bias would be redundant.
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))

        def pool_relu() -> nn.Sequential:
            # relu(maxpool(x)) == maxpool(relu(x)) exactly, forward and backward (both are monotone and the pool
            # routes its gradient to the same element), at a quarter of the ReLU's cost: ReLU after the pool.
            return nn.Sequential(nn.MaxPool2d(2), nn.ReLU(inplace=True))

        w1, w2, w3, w4 = widths
        # Only the first, 3->32 layer runs at full resolution; each later layer at half the previous one.
        # About 15M multiply-adds per 32x32 image (a ResNet18 is 560M): the CPU grids and the AutoAttack
        # evaluation (5,000 Square queries per robust image) stay affordable on 2 cores.
        # (Parameter names are those of the conv-bn-relu / maxpool layout: models saved before load unchanged.)
        self.body = nn.Sequential(
            conv_bn(in_channels, w1, relu=False),
            pool_relu(),
            conv_bn(w1, w2, relu=False),
            pool_relu(),
            conv_bn(w2, w3, relu=False),
            pool_relu(),
            conv_bn(w3, w4),
        )
        self.fc = nn.Linear(w4, hidden)
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(_pool_flatten(self.body(x))))


# --------------------------------------------------------------------------------------------------
# CIFAR ResNet (TRADES models/resnet.py layout)
# --------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Projection shortcut only when the shape changes (empty Sequential = identity otherwise).
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride sits on the 3x3 conv, as in the TRADES/kuangliu CIFAR ResNet.
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Classifier):
    def __init__(self, block, num_blocks, num_classes: int, in_channels: int = 3, stem_padding: int = 1):
        super().__init__()
        self.in_planes = 64
        # stem_padding 1: the TRADES code's CIFAR ResNet; 0: the AFD code's (``resnet18_afd``)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=stem_padding, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.feature_dim = 512 * block.expansion
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        # Initialization: PyTorch defaults, like the reference implementation.

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):  # only the first block of a stage downsamples
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return _pool_flatten(out)


# --------------------------------------------------------------------------------------------------
# PreAct ResNet18 (locuslab/robust_overfitting preactresnet.py layout)
# --------------------------------------------------------------------------------------------------
class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # Pre-activation: a projection shortcut sees the normalized/activated input, identity sees raw x.
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(Classifier):
    def __init__(self, num_blocks, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        # Blocks end with an un-normalized sum, so a final BN + ReLU is needed before pooling.
        self.bn = nn.BatchNorm2d(512)
        self.feature_dim = 512
        self.classifier = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return _pool_flatten(F.relu(self.bn(out)))


# --------------------------------------------------------------------------------------------------
# WideResNet (TRADES models/wideresnet.py layout)
# --------------------------------------------------------------------------------------------------
class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # Not in-place on x itself: x is also the identity shortcut (and may be a leaf needing grad).
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # When the width changes, the 1x1 projection is applied to the activated input (reference behaviour).
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate) for i in range(n)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(Classifier):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ModelError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = widths[3]
        self.classifier = nn.Linear(widths[3], num_classes)
        # Reference initialization: He-normal (fan_out) convs, BN to identity, zero linear bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def features(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return _pool_flatten(self.relu(self.bn1(out)))


class Normalized(Classifier):
    """A classifier with a normalisation layer in front, ``(x - mean) / std``: how some public checkpoints were
    trained (their network never sees [0, 1] pixels). For evaluating such a checkpoint as it was trained; the
    threat model stays in [0, 1] pixel space, where the attack works."""

    def __init__(self, inner: Classifier, mean: Tensor, std: Tensor):
        super().__init__()
        self.inner = inner
        self.feature_dim = inner.feature_dim
        self.classifier = inner.classifier
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", mean.detach().float().reshape(shape).clone())
        self.register_buffer("std", std.detach().float().reshape(shape).clone())

    def features(self, x: Tensor) -> Tensor:
        return self.inner.features((x - self.mean) / self.std)


# --------------------------------------------------------------------------------------------------
# Factory and feature access
# --------------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int, in_channels: int = 3) -> Classifier:
    """Build a freshly initialized model by name (see :data:`MODELS`)."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise ModelError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    if name == "small_cnn":
        return SmallCNN(num_classes, in_channels)
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)
    if name == "resnet18_afd":
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, stem_padding=0)
    if name == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)
    if name == "resnet50_afd":
        return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, stem_padding=0)
    if name == "preact_resnet18":
        return PreActResNet([2, 2, 2, 2], num_classes, in_channels)
    if name == "wrn34_10":
        return WideResNet(34, 10, num_classes, in_channels, drop_rate=0.0)
    raise AssertionError("unreachable: MODELS and build_model out of sync")  # pragma: no cover


def feature_extractor_and_head(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Linear]:
    """Return ``(features_fn, head)`` with ``model(x) == head(features_fn(x))`` for the usual models.

    * A model exposing ``features`` and a ``classifier`` that is an ``nn.Linear`` (every :class:`Classifier`)
      uses them directly.
    * Any other model (e.g. from RobustBench or torchvision): the LAST ``nn.Linear`` submodule (in registration
      order) is taken as the head, and ``features_fn`` runs the full forward with a temporary forward
      pre-hook that captures that layer's input. The captured tensor keeps its autograd graph, so
      feature-level losses can back-propagate through it.
    """
    feats = getattr(model, "features", None)
    head = getattr(model, "classifier", None)
    if callable(feats) and isinstance(head, nn.Linear):

        def features_fn(x: Tensor) -> Tensor:
            f = feats(x)
            # torchvision-style models (DenseNet, ...) also have .features/.classifier, but their .features
            # is a conv trunk whose output is NOT the head's input; fail loudly instead of mis-using it.
            if f.dim() != 2 or f.shape[1] != head.in_features:
                raise ModelError(
                    f"{type(model).__name__}.features returned shape {tuple(f.shape)}, not (B, {head.in_features})"
                )
            return f

        return features_fn, head

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer to use as the classifier head")
    head = linears[-1]

    def hooked_features(x: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def grab(_module, inputs):
            captured.append(inputs[0])

        # The hook lives only for this call, so the model is left unchanged (no leaked hooks).
        handle = head.register_forward_pre_hook(grab)
        try:
            model(x)
        finally:
            handle.remove()
        if not captured:
            raise ModelError(f"the last nn.Linear of {type(model).__name__} was not called in forward")
        # If the head were applied more than once, the last call is the one producing the output.
        return captured[-1]

    return hooked_features, head
