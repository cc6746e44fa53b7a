"""Checkpoint formats people have (bare, wrapped, DataParallel-prefixed, our exported models) load into the
architecture; one that does not fit is refused in one line naming the keys."""
from __future__ import annotations

import pytest
import torch

from bench.core.checkpoints import load_into, read_state_dict
from bench.core.config import ConfigError
from bench.models.architectures import build_model
from bench.core.store import content_digest


def _model(seed=0, classes=10):
    torch.manual_seed(seed)
    return build_model("small_cnn", classes, 3)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "net", "module_prefix", "exported", "compiled"])
def test_each_format_loads_the_same_weights(tmp_path, wrap):
    src = _model(0)
    state = src.state_dict()
    if wrap == "bare":
        blob = state
    elif wrap == "module_prefix":
        blob = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    elif wrap == "compiled":
        blob = {f"_orig_mod.{k}": v for k, v in state.items()}
    elif wrap == "exported":
        inner = {"model": "small_cnn", "num_classes": 10, "in_channels": 3, "run_id": "x", "state_dict": state}
        blob = {**inner, "digest": content_digest(inner)}
    else:
        blob = {wrap: state, "optimizer_lr": 0.1}
    torch.save(blob, tmp_path / "c.pt")
    dst = _model(1)
    assert not torch.equal(dst.classifier.weight, src.classifier.weight)
    load_into(dst, tmp_path / "c.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_mismatch_is_one_line_naming_keys(tmp_path):
    torch.save(_model(0, classes=100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(ConfigError) as e:
        load_into(_model(1, classes=10), tmp_path / "c100.pt")
    msg = str(e.value)
    assert "\n" not in msg and "classifier.weight" in msg and "(100," in msg
    state = _model(0).state_dict()
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ConfigError, match="missing classifier.bias.*unexpected extra.weight"):
        load_into(_model(1), tmp_path / "odd.pt")


def test_unreadable_garbled_and_unsafe_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="is a folder, not a checkpoint file"):  # it exists: not "does not exist"
        read_state_dict(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read safely"):
        read_state_dict(tmp_path / "junk.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": _model(0).state_dict(), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="cannot be read safely"):
        read_state_dict(tmp_path / "evil.pt")
    inner = {"model": "small_cnn", "state_dict": _model(0).state_dict()}
    blob = {**inner, "digest": "0" * 32}
    torch.save(blob, tmp_path / "garbled.pt")
    with pytest.raises(ConfigError, match="garbled"):
        read_state_dict(tmp_path / "garbled.pt")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(ConfigError, match="holds no state dict"):
        read_state_dict(tmp_path / "opt.pt")


@pytest.mark.parametrize("alias", ["linear", "fc", "head"])
def test_the_fields_classifier_names_are_mapped_and_said(tmp_path, alias):
    def _model(seed):  # resnet18: small_cnn has a hidden layer called fc
        torch.manual_seed(seed)
        return build_model("resnet18", 10, 3)

    src = _model(0)
    state = {(alias + k[len("classifier"):] if k.startswith("classifier.") else k): v
             for k, v in src.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "c.pt")
    dst = _model(1)
    meta = load_into(dst, tmp_path / "c.pt")
    assert meta["key_mapping"] == [f"{alias}.* -> classifier.*"]
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_a_checkpoint_that_fits_maps_nothing(tmp_path):
    torch.save(_model(0).state_dict(), tmp_path / "c.pt")
    assert load_into(_model(1), tmp_path / "c.pt")["key_mapping"] == []


class _Normalize(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


@pytest.mark.parametrize("layout", ["sequential", "named"])
def test_a_normalisation_layer_in_front_is_evaluated_with_the_model_and_refused_for_fine_tuning(tmp_path, layout):
    from bench.models.architectures import Normalized

    net = _model(0).eval()
    trained = torch.nn.Sequential(_Normalize(), net).eval()
    if layout == "sequential":
        state = trained.state_dict()  # 0.mean, 0.std, 1.conv...
    else:
        state = {"normalize.mean": trained[0].mean, "normalize.std": trained[0].std,
                 **{f"model.{k}": v for k, v in net.state_dict().items()}}
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="normalisation layer in front.*save the network without it"):
        load_into(_model(1), tmp_path / "c.pt")
    dst = _model(1)
    meta = load_into(dst, tmp_path / "c.pt", allow_normalization=True)
    assert meta["key_mapping"] and "normalisation layer" in meta["key_mapping"][0]
    model = Normalized(dst, *meta["normalization"]).eval()
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), model.classifier(model.features(x)), rtol=0, atol=0)


def test_a_mismatch_says_what_to_try(tmp_path):
    torch.save(_model(0, classes=100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(ConfigError, match=r"check --model .*resnet18_afd.*pkg\.module:factory"):
        load_into(_model(1, classes=10), tmp_path / "c100.pt")
