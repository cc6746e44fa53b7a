"""Classifier checkpoints in the formats people actually have, loaded into a given architecture.

Accepted (``torch.load(weights_only=True)``: a pickle that would run code is refused):

- a bare state dict ``{"conv1.weight": tensor, ...}``;
- a wrapper holding one: ``{"state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}``, ``{"model_state_dict": ...}``,
  ``{"ema": ...}`` (the first that is a state dict wins, in that order), which covers our exported models
  (``results/models/<run_id>.pt``: ``state_dict`` plus model name, classes and a content digest);
- keys with DataParallel / DistributedDataParallel's ``module.`` prefix, or ``torch.compile``'s ``_orig_mod.``;
- the classifier under the names this field's public codes give it: ``linear`` (the TRADES, MART and AFD codes'
  ResNets), ``fc`` (torchvision, many others), ``head`` or ``last_linear``, mapped onto the architecture's own
  (``classifier`` for every built-in model);
- a normalisation layer in front of the network (``nn.Sequential(Normalize, net)`` saved as ``0.mean``/``0.std``
  and ``1.<net keys>``, or ``normalize.mean``/``mu``/``sigma`` and friends beside ``model.``/``net.``-prefixed
  keys): its mean and std are returned so the caller can evaluate the model with it (``bench eval``), or refuse it
  (a parent to fine-tune: the threat model is defined in [0, 1] pixels).

Every mapping applied is named in the returned metadata (``key_mapping``), for the caller to print and record. A
checkpoint that does not fit the architecture is refused with one line naming the first mismatched keys and shapes
and what to try, before anything runs (``ConfigError``).
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
# The classifier's names in the public codes of this field, tried in this order when the architecture's own is
# missing from a checkpoint.
CLASSIFIER_ALIASES = ("classifier", "linear", "fc", "head", "last_linear")
# A normalisation layer's buffers (mean, std) and the prefixes the wrapped network's keys then carry.
NORM_NAMES = (("mean", "std"), ("mu", "sigma"))
NORM_MODULES = ("0", "normalize", "normalization", "norm", "normalizer", "")
NET_PREFIXES = ("1.", "model.", "net.", "basic_net.", "module.", "")


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


def check_checkpoint_path(path: str | Path) -> None:
    """ConfigError (one line) unless ``path`` is a file: a folder is said to be one, since it does exist."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"checkpoint {path} is a folder, not a checkpoint file: give the path of a .pt/.pth file")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: give the path of a .pt/.pth file")


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside ``path`` and the metadata beside it (our exported models' model name, classes).

    ConfigError (one line) when the file is missing, unreadable, garbled, or holds no state dict."""
    path = Path(path)
    check_checkpoint_path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, a pickle with code in it, not a torch file: all refused
        raise ConfigError(f"checkpoint {path} cannot be read safely ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}); "
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
            keys = sorted(map(str, blob))[:6] if isinstance(blob, Mapping) else type(blob).__name__
            raise ConfigError(f"checkpoint {path} holds no state dict (found {keys}); expected a state dict or "
                              f"one under {', '.join(repr(k) for k in WRAPPER_KEYS)}")
    return _strip_prefixes(state), meta


def _split_normalization(state: dict[str, Tensor], mine: Mapping[str, Tensor]
                         ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None, str | None]:
    """``state`` without a normalisation layer in front, that layer's (mean, std), and the mapping's description;
    unchanged when no known layout applies."""
    for module in NORM_MODULES:
        for mean_name, std_name in NORM_NAMES:
            mk, sk = (f"{module}.{mean_name}", f"{module}.{std_name}") if module else (mean_name, std_name)
            if mk not in state or sk not in state or mk in mine:
                continue
            rest = {k: v for k, v in state.items() if k not in (mk, sk)}
            for prefix in NET_PREFIXES:
                if prefix and not all(k.startswith(prefix) for k in rest):
                    continue
                net = {k[len(prefix):]: v for k, v in rest.items()}
                if len(net) and len(set(net) & set(mine)) >= len(net) // 2:
                    where = f"{mk}/{sk}" + (f" before {prefix}*" if prefix else "")
                    return net, (state[mk].float(), state[sk].float()), f"a normalisation layer ({where}) in front"
    return state, None, None


def _map_classifier(state: dict[str, Tensor], mine: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    """The classifier's keys renamed onto the architecture's (``linear.weight`` -> ``classifier.weight``, ...).
    The architecture's classifier is the first alias it has (a hidden ``fc`` beside a ``classifier`` is not it);
    an alias that is also a layer of the architecture is never renamed."""
    own = next((a for a in CLASSIFIER_ALIASES if f"{a}.weight" in mine), None)
    if own is None or f"{own}.weight" in state:
        return state, None
    for alias in CLASSIFIER_ALIASES:
        if alias != own and f"{alias}.weight" in state and f"{alias}.weight" not in mine:
            renamed = {(own + k[len(alias):] if k.startswith(alias + ".") else k): v for k, v in state.items()}
            return renamed, f"{alias}.* -> {own}.*"
    return state, None


def map_keys(state: dict[str, Tensor], mine: Mapping[str, Tensor]
             ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None, list[str]]:
    """``state`` with the field's usual naming differences mapped onto an architecture's keys ``mine``: (mapped
    state, the normalisation layer's (mean, std) or None, the mappings applied). A state that already fits is
    returned as it is."""
    if set(state) == set(mine):
        return state, None, []
    notes = []
    state, norm, note = _split_normalization(state, mine)
    if note:
        notes.append(note)
    state, note = _map_classifier(state, mine)
    if note:
        notes.append(note)
    return state, norm, notes


def load_into(model: nn.Module, path: str | Path, *, allow_normalization: bool = False) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` (strict: every key and shape must match, after the
    mappings of :func:`map_keys`); returns its metadata, with ``key_mapping`` (the mappings applied, a list of
    lines) and, when ``allow_normalization`` and the checkpoint has a normalisation layer in front,
    ``normalization`` = (mean, std) for the caller to put in front of ``model``. A mismatch is one ConfigError
    line naming the first differing keys and what to try."""
    state, meta = read_state_dict(path)
    mine = model.state_dict()
    state, norm, notes = map_keys(state, mine)
    if norm is not None and not allow_normalization:
        raise ConfigError(f"checkpoint {path} has a normalisation layer in front of the network; a model to "
                          "fine-tune must take [0, 1] pixels (eps is defined there): save the network without it")
    meta = {**meta, "key_mapping": notes}
    if norm is not None:
        meta["normalization"] = norm
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
                          "check --model (`bench list`; resnet18_afd is the AFD code's ResNet18) and the number of "
                          "classes, or give --model pkg.module:factory with the checkpoint's own architecture")
    # a float weight saved in another float precision is cast; one of integers, booleans or complex numbers is no
    # weight of this model (the cast would drop digits or an imaginary part without a word)
    kinds = [f"{k} {state[k].dtype}" for k, v in mine.items()
             if v.is_floating_point() and not state[k].is_floating_point()]
    if kinds:
        raise ConfigError(f"checkpoint {path} holds weights that are not floating point ({', '.join(kinds[:2])}"
                          f"{' ...' if len(kinds) > 2 else ''}): save the model's own state dict")
    model.load_state_dict({k: state[k].to(mine[k].dtype) for k in mine})
    return meta
