"""The plugin's own test: its loss is vAFT's plus clean_weight times the clean cross-entropy, through afd-bench's
public interface only (the registry, Context, StepInfo and the data/model builders)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.core.config import TrainConfig
from bench.data import DatasetInfo, Loader, Split
from bench.models.architectures import build_model
from methods import Context, StepInfo, get_method, make_hparams, resolve_hparams


def _method(name, hp=None):
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(16) % 4)
    info = DatasetInfo(name="random", num_classes=4, channels=3, image_size=16, classes=tuple("abcd"))
    torch.manual_seed(0)
    parent = build_model("small_cnn", 4, 3).eval()
    model = build_model("small_cnn", 4, 3)
    model.load_state_dict(parent.state_dict())
    train = TrainConfig(epochs=1, batch_size=8, lr=0.01, schedule="constant")
    loader = Loader(split, 8, device="cpu", shuffle=False, augment=False, seed=0)
    ctx = Context(info=info, eps=8 / 255, device=torch.device("cpu"), epochs=1, steps_per_epoch=len(loader), seed=0,
                  train=split, parent_model=parent, train_cfg=train)
    return get_method(name)(model, make_hparams(name, resolve_hparams(name, hp)), ctx), next(iter(loader.epoch(0)))


def test_loss_is_vaft_plus_weighted_clean_ce():
    ours, batch = _method("vaft_clean", {"clean_weight": 2.0})
    base, _ = _method("vaft")
    step = StepInfo(epoch=0, step=0, global_step=0)
    torch.manual_seed(1)
    out = ours.loss(batch, step)
    torch.manual_seed(1)
    ref = base.loss(batch, step)
    clean = F.cross_entropy(base.model(batch.x), batch.y)
    torch.testing.assert_close(out["loss"], ref["loss"] + 2.0 * clean)
    assert out["clean_ce"].item() > 0


def test_inherits_vafts_parent_and_recipe():
    cls, vaft = get_method("vaft_clean"), get_method("vaft")
    assert cls.parent == vaft.parent and cls.recipe == vaft.recipe


def test_declares_its_capabilities():
    cls = get_method("vaft_clean")
    assert cls.display_label() == "vAFT+clean" and cls.plan_prior() == (38.0, True)
    hp = make_hparams("vaft_clean", resolve_hparams("vaft_clean"))
    # inherited from vAFT: the base train_step, so the gradient scaler (fp16) and torch.compile are fine
    assert cls.grad_scaler_problem(hp) is None and cls.compile_problem(hp) is None
    assert vars(cls).get("produces") is None  # it trains no parents
