"""Tests for bench.models.architectures: shapes, the features/classifier split, the factory and the hook-based feature path."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models.architectures import MODELS, Classifier, ModelError, build_model, feature_extractor_and_head

BIG = {"resnet50", "resnet50_afd", "wrn34_10"}
FEATURE_DIM = {"small_cnn": 256, "resnet18": 512, "resnet18_afd": 512, "resnet50": 2048, "resnet50_afd": 2048, "preact_resnet18": 512, "wrn34_10": 640}


def _check_model(model: Classifier, num_classes: int, in_channels: int, size: int, batch: int = 2) -> None:
    model.eval()  # eval: BN uses running stats, so forward and features+classifier see identical computations
    x = torch.rand(batch, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        assert logits.shape == (batch, num_classes)
        assert feats.shape == (batch, model.feature_dim)
        # Exactly equal (not just close): forward is defined as classifier(features(x)).
        assert torch.equal(logits, model.classifier(feats))
    assert isinstance(model.classifier, nn.Linear) and model.classifier.bias is not None
    assert model.classifier.in_features == model.feature_dim


@pytest.mark.parametrize("name", [m for m in MODELS if m not in BIG])
@pytest.mark.parametrize("num_classes,in_channels", [(10, 3), (200, 1), (100, 3)])
@pytest.mark.parametrize("size", [32, 64])
def test_small_models_shapes(name, num_classes, in_channels, size):
    model = build_model(name, num_classes, in_channels)
    assert model.feature_dim == FEATURE_DIM[name]
    _check_model(model, num_classes, in_channels, size)


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_models_shapes(name):
    # Big nets: one build per configuration and a batch of 2, to keep the suite fast on a CPU.
    model = build_model(name, 10, 3)
    assert model.feature_dim == FEATURE_DIM[name]
    _check_model(model, 10, 3, 32)
    _check_model(build_model(name, 200, 1), 200, 1, 64)


def test_reference_parameter_counts():
    # Same counts as the TRADES reference nets for 10 classes (WRN without TRADES' unused sub_block1).
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(build_model("resnet18", 10)) == 11_173_962
    assert count(build_model("preact_resnet18", 10)) == 11_172_170
    assert 400_000 <= count(build_model("small_cnn", 10)) <= 500_000


def test_no_normalization_layer_and_train_mode_backward():
    # Inputs are used as given in [0, 1]; a batch in train mode back-propagates to the input.
    model = build_model("small_cnn", 10)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "preact_resnet18"])
def test_channels_last_matches(name):
    model = build_model(name, 10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        feats = model.features(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4)
    assert feats.shape == (2, model.feature_dim)


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelError) as info:
        build_model("vgg16", 10)
    msg = str(info.value)
    assert "vgg16" in msg and "\n" not in msg
    for name in MODELS:
        assert name in msg


def test_invalid_arguments():
    with pytest.raises(ModelError):
        build_model("small_cnn", 0)


def test_feature_extractor_classifier_path():
    model = build_model("small_cnn", 10).eval()
    feats_fn, head = feature_extractor_and_head(model)
    assert head is model.classifier
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(feats_fn(x), model.features(x))
        assert torch.equal(head(feats_fn(x)), model(x))


def test_feature_extractor_hook_path_on_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5),
    )
    feats_fn, head = feature_extractor_and_head(model)
    assert head is model[-1]  # the LAST Linear, not the hidden one
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    feats = feats_fn(x)
    assert torch.equal(feats, model[:-1](x))  # exactly the input of the final Linear
    assert torch.equal(head(feats), model(x))
    assert len(head._forward_pre_hooks) == 0  # the temporary hook was removed
    # Features keep their graph, so feature-level losses can train the backbone.
    feats.sum().backward()
    assert x.grad is not None and model[0].weight.grad is not None


def test_feature_extractor_hook_removed_on_error():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            self.fc(x)
            raise RuntimeError("boom")

    model = Boom()
    feats_fn, head = feature_extractor_and_head(model)
    with pytest.raises(RuntimeError):
        feats_fn(torch.rand(1, 4))
    assert len(head._forward_pre_hooks) == 0


def test_feature_extractor_rejects_torchvision_style_features():
    # DenseNet-style: .features is a conv trunk (4-D output), .classifier a Linear; must not be mistaken for features.
    class DenseLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3)
            self.classifier = nn.Linear(4, 2)

        def forward(self, x):
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    feats_fn, _ = feature_extractor_and_head(DenseLike())
    with pytest.raises(ModelError):
        feats_fn(torch.rand(1, 3, 8, 8))


def test_feature_extractor_needs_a_linear():
    with pytest.raises(ModelError):
        feature_extractor_and_head(nn.Sequential(nn.Conv2d(3, 2, 1)))


def test_small_cnn_relu_after_pool_is_exactly_the_conv_bn_relu_pool_layout():
    """SmallCNN applies ReLU after each max-pool (cheaper); outputs, input gradients and parameter gradients must
    equal the textbook conv-bn-relu-pool layout bit for bit, with the same parameter names (old models load)."""
    torch.manual_seed(0)
    new = build_model("small_cnn", 10, 3)

    def cbr(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    old = copy.deepcopy(new)
    old.body = nn.Sequential(cbr(3, 32), nn.MaxPool2d(2), cbr(32, 64), nn.MaxPool2d(2), cbr(64, 128),
                             nn.MaxPool2d(2), cbr(128, 256))
    old.load_state_dict(new.state_dict())  # strict: the same names
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    outs = []
    for m in (new, old):
        xi = x.clone().requires_grad_(True)
        loss = F.cross_entropy(m.train()(xi), y)
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        outs.append((loss.detach(), grads))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        assert torch.equal(a, b)
