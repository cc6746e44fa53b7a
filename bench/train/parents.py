"""Parents: the exported model a fine-tuning run starts from (a trained parent run, a zoo model, the user's
file), written by the parent's run and read, checked to fit, by its children."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.core.checkpoints import load_into
from bench.core.config import ConfigError, RunConfig, file_digest, run_id
from bench.core.runtime import Runtime
from bench.core.store import Store, atomic_torch_save, content_digest
from bench.models.architectures import build_model
from bench.models.zoo import load_zoo_model


def save_model(store: Store, rid: str, cfg: RunConfig, model: nn.Module, num_classes: int, channels: int) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = {"model": cfg.model, "num_classes": num_classes, "in_channels": channels, "run_id": rid, "state_dict": state}
    atomic_torch_save({**blob, "digest": content_digest(blob)}, store.model_path(rid))


def load_parent(cfg: RunConfig, store: Store, num_classes: int, channels: int, rt: Runtime) -> nn.Module:
    """The parent's exported plain model, checked to match this run's architecture and classes."""
    if cfg.parent_zoo is not None:
        return load_zoo_model(cfg.parent_zoo, cfg.dataset, rt)
    if cfg.parent_file is not None:
        return load_parent_file(cfg, num_classes, channels)
    assert cfg.parent is not None
    pid = run_id(cfg.parent)
    path = store.model_path(pid)
    if not path.exists():
        raise ConfigError(f"parent run {pid} ({cfg.parent.method}) has no model at {path}: run its grid so "
                          "parents train first")
    blob = read_parent_file(path, cfg, num_classes, channels)
    model = build_model(cfg.model, num_classes, channels)
    model.load_state_dict(blob["state_dict"])
    return model


def load_parent_file(cfg: RunConfig, num_classes: int, channels: int) -> nn.Module:
    """The user's own pre-trained model (``cfg.parent_file``, any bench.core.checkpoints format) in ``cfg.model``'s
    architecture; ConfigError (one line) when it changed since the run was named or does not fit."""

    path = cfg.parent_file
    if not Path(path).is_file():
        raise ConfigError(f"parent file {path} does not exist: put it back or name the run's parent anew")
    if file_digest(path) != cfg.parent_digest:
        raise ConfigError(f"parent file {path} changed since this run was defined (digest {cfg.parent_digest}); "
                          "run the command again to make it a new run")
    model = build_model(cfg.model, num_classes, channels)
    load_into(model, path)
    return model


def read_parent_file(path: Path, cfg: RunConfig, num_classes: int, channels: int, *, mmap: bool = False) -> dict:
    """An exported parent model file, loaded with weights_only=True and checked to be the architecture and class
    count ``cfg`` needs; ConfigError (one line) otherwise. ``mmap`` (preflight) reads little more than the header."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if not isinstance(blob, dict) or "state_dict" not in blob:
            raise ValueError("not an exported model")
        digest = blob.pop("digest", None)  # files exported before digests existed have none
        if digest is not None and digest != content_digest(blob):
            raise ValueError("content digest mismatch: the file is garbled")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ConfigError(f"parent model {path} is unreadable ({type(e).__name__}): delete it and rerun the parent") from None
    if (blob.get("model"), blob.get("num_classes"), blob.get("in_channels")) != (cfg.model, num_classes, channels):
        raise ConfigError(f"parent checkpoint {path} is a {blob.get('model')} with {blob.get('num_classes')} classes; "
                          f"this run needs a {cfg.model} with {num_classes}: delete it or give the run a parent of the "
                          "same model and data set")
    return blob
