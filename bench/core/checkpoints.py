"""Classifier checkpoints in the formats people actually have, loaded into a given architecture.

Accepted (``torch.load(weights_only=True)``: a pickle that would run code is refused):

- a bare state dict ``{"conv1.weight": tensor, ...}``;
- a wrapper holding one: ``{"state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}``, ``{"model_state_dict": ...}``,
  ``{"ema": ...}`` (the first that is a state dict wins, in that order), which covers our exported models
  (``results/models/<run_id>.pt``: ``state_dict`` plus model name, classes and a content digest);
- keys with DataParallel / DistributedDataParallel's ``module.`` prefix, or ``torch.compile``'s ``_orig_mod.``.

A checkpoint that does not fit the architecture is refused with one line naming the first mismatched keys and
shapes, before anything runs (``ConfigError``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bench.core.config import ConfigError
from bench.core.store import content_digest

WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict", "ema")
PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(state)
    changed = True
    while changed:  # "module._orig_mod.conv1.weight" and friends
        changed = False
        for prefix in PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside ``path`` and the metadata beside it (our exported models' model name, classes).

    ConfigError (one line) when the file is missing, unreadable, garbled, or holds no state dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: give the path of a .pt/.pth file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, a pickle with code in it, not a torch file: all refused
        raise ConfigError(f"checkpoint {path} cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "save it with torch.save(model.state_dict(), path)") from None
    meta: dict[str, Any] = {}
    if isinstance(blob, Mapping) and "digest" in blob:
        blob = dict(blob)
        digest = blob.pop("digest")
        if digest != content_digest(blob):
            raise ConfigError(f"checkpoint {path} is garbled (content digest mismatch): export or copy it again")
    if _is_state_dict(blob):
        state = blob
    else:
        state = None
        if isinstance(blob, Mapping):
            for key in WRAPPER_KEYS:
                if _is_state_dict(blob.get(key)):
                    state = blob[key]
                    meta = {k: v for k, v in blob.items() if k != key and not isinstance(v, (Mapping, Tensor))}
                    break
        if state is None:
            keys = sorted(blob)[:6] if isinstance(blob, Mapping) else type(blob).__name__
            raise ConfigError(f"checkpoint {path} holds no state dict (found {keys}); expected a state dict or "
                              f"one under {', '.join(repr(k) for k in WRAPPER_KEYS)}")
    return _strip_prefixes(state), meta


def load_into(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` (strict: every key and shape must match); returns its
    metadata. A mismatch is one ConfigError line naming the first differing keys."""
    state, meta = read_state_dict(path)
    mine = model.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape {'; '.join(shapes[:2])}{' ...' if len(shapes) > 2 else ''} (checkpoint vs model)")
        raise ConfigError(f"checkpoint {path} does not fit this architecture: {'; '.join(parts)}; "
                          "check --model and the number of classes")
    model.load_state_dict({k: state[k].to(mine[k].dtype) for k in mine})
    return meta
