"""Reference for ``resnet18_afd``: an independent transcription of the ResNet18 of changzhang777/AFD (at bb84005)
``models/resnet.py`` (``BasicBlock`` :23-45, ``ResNet.__init__``/``_make_layer``/``forward`` :71-111, ``ResNet18``
:297). Written for this project from the public code (never copied); each line cites its source.

Transcription choices (none changes what is computed):
- ``forward``'s ``prejection`` flag (:96, returns the features too) and the unused ``feature_forward`` (:114-146,
  which reads a ``T_revision`` layer the class never builds) are left out.
- ``view(out.size(0), -1)`` (:104) is ``flatten(1)``, the same on a contiguous tensor.
The parameter names are the code's (``linear`` for the classifier), so a state dict of this module is what a
checkpoint of the AFD code holds.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """:23-45, expansion 1."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)  # :27
        self.bn1 = nn.BatchNorm2d(cout)  # :28
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)  # :29
        self.bn2 = nn.BatchNorm2d(cout)  # :30
        self.shortcut = nn.Sequential()  # :32
        if stride != 1 or cin != cout:  # :33-37: 1x1 conv + BN
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))  # :40
        out = self.bn2(self.conv2(out))  # :41
        return F.relu(out + self.shortcut(x))  # :42-43


class AFDResNet18(nn.Module):
    """:71-111 with BasicBlock and [2, 2, 2, 2] (:297), input_size 32."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=0, bias=False)  # :75, padding=0: 32x32 -> 30x30
        self.bn1 = nn.BatchNorm2d(64)  # :76
        cin = 64
        for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):  # :77-80
            blocks = []
            for s in (stride, 1):  # :90-95: only the first block of a stage downsamples
                blocks.append(Block(cin, planes, s))
                cin = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512 * (32 // 32) ** 2, num_classes)  # :81
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # :82

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))  # :99
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # :100-103
        return self.linear(self.avgpool(out).flatten(1))  # :104-106
