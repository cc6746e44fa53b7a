"""``resnet18_afd`` is the AFD code's ResNet18: a checkpoint of the transcription (``linear`` classifier, the
code's own names) loads into it through the key mapping and gives the same logits and features, in eval and train
mode; loaded into ``resnet18`` (padded first convolution) it loads just as silently and gives other logits, which
is why the two are separate names."""
from __future__ import annotations

import torch

from bench.core.checkpoints import load_into
from bench.models.architectures import build_model
from ref_resnet18_afd import AFDResNet18


def _checkpoint(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    ref = AFDResNet18(10)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is tested too
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "afd_resnet18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    return ref, path


def test_the_afd_codes_checkpoint_loads_into_resnet18_afd_and_computes_the_same(tmp_path):
    ref, path = _checkpoint(tmp_path)
    ours = build_model("resnet18_afd", 10)
    meta = load_into(ours, path)
    assert meta["key_mapping"] == ["linear.* -> classifier.*"]
    x = torch.rand(6, 3, 32, 32)
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    ref.eval()
    ours.eval()
    # the features of Figure 1a's gap are the input of the classifier, as in the code
    feats = ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
        torch.relu(ref.bn1(ref.conv1(x)))))))).flatten(1)
    torch.testing.assert_close(ours.features(x), feats, rtol=0, atol=0)


def test_the_same_checkpoint_in_resnet18_loads_but_is_another_network(tmp_path):
    ref, path = _checkpoint(tmp_path)
    padded = build_model("resnet18", 10)
    load_into(padded, path)  # same names and shapes: nothing can tell them apart from the file
    ref.eval()
    padded.eval()
    x = torch.rand(6, 3, 32, 32)
    assert (padded(x) - ref(x)).abs().max() > 1e-3
