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
