"""Reference for the RiFT differential tests: an independent transcription of the public RiFT code's pieces,
written for this project from microsoft/robustlearn @31580cd (never copied), citing file and line:

- ``torchattacks_pgd``: the attack behind ``generate_adv_dataset`` (RiFT/main.py l.16-44: torchattacks.PGD(eps=8/255,
  alpha=2/225, steps=10, random_start=True) on the eval-mode model) and ``evaluate_cifar_robustness``
  (RiFT/utils.py l.62-95, the same attack); torchattacks 3.4.0 (RiFT/env.yaml) attacks/pgd.py l.54-77: start
  x + U(-eps, eps) clamped to [0, 1], then 10 x (step alpha * sign(grad of the mean CE), clip to the eps-ball,
  clamp to [0, 1]); attack.py l.218-229: eval mode while attacking.
- ``origin_loss`` and ``module_mrc``: RiFT/main.py ``layer_sharpness`` l.59-76 (R(theta_AT) on the adversarial set)
  and l.88-142 for ONE module: a copy of the model in eval mode with only that module's ``.weight`` trainable,
  SGD(lr=1) over its parameters, 10 epochs of gradient ascent on the batch-mean CE; after each epoch
  ``diff = w - w0``, ``times = ||diff|| / ||w0||``, and if ``times > 0.1`` the weight is reset to
  ``w0 + diff / times * 0.1``; R is then measured over the whole set and ``max_loss`` (starting at 0.0) keeps the
  largest; MRC = max_loss - origin_loss.
- ``finetune_setup`` and ``finetune_step``: RiFT/main.py l.287-290 (``requires_grad`` = ``args.layer in name``, a
  substring test on parameter names), RiFT/optimizer.py l.16 (SGD over ALL model parameters, momentum 0.9, weight
  decay 5e-4, lr 0.001), RiFT/main.py l.266-267 with optimizer.py l.23-26 (MultiStepLR at epochs // 2, gamma
  0.1, stepped after each epoch, main.py l.327), RiFT/main.py ``train`` l.152-172 (``model.train()``, CE on the
  clean batch, zero_grad / backward / step).
- ``best_epoch``: RiFT/main.py l.209, 316-320, 329-330 (theta_FT = the epoch whose clean accuracy is STRICTLY the best
  so far; ``best_acc`` starts at 0).
- ``interpolate`` and ``interpolation_curve``: RiFT/utils.py ``interpolation`` l.26-47 (alphas = np.arange(0, 1.1,
  0.1); ``alpha * ft + (1 - alpha) * init`` for every state entry; ``load_state_dict``; clean accuracy by
  ``evaluate`` l.233-250 in eval mode and robust accuracy by ``evaluate_cifar_robustness``, both in percent).
- ``paper_choice``: the paper's selection rule, as quoted in shared/reference/methods.md ("the point that most
  significantly improves the generalization while the corresponding adversarial robustness is no less than the
  original robustness by 0.1"); the code only logs the curve (README: pick it by hand).

Test-side alignments, not in the code: the random numbers come from the caller (the uniform start from a
``torch.Generator``, each ascent epoch's batch order as a permutation), so both sides see the same ones; the
code's measurement passes over a shuffled loader are taken in order here (a sum: only rounding can differ);
inputs are in [0, 1] and the models contain no normalization (the code wraps its model in a Normalize layer,
main.py l.49-54: the same function of the pixels).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

EPS = 8 / 255  # main.py l.20, utils.py l.77
ALPHA = 2 / 225  # main.py l.20, utils.py l.77 (as written in the code)
STEPS = 10


def torchattacks_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                     *, eps: float = EPS, alpha: float = ALPHA, steps: int = STEPS) -> torch.Tensor:
    was_training = model.training
    model.eval()
    loss = nn.CrossEntropyLoss()
    images = images.clone().detach()
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype)
    adv = images + (u * (2 * eps) - eps)  # uniform_(-eps, eps): from + (to - from) * u
    adv = torch.clamp(adv, min=0, max=1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        cost = loss(model(adv), labels)
        grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - images, min=-eps, max=eps)
        adv = torch.clamp(images + delta, min=0, max=1).detach()
    model.train(was_training)
    return adv


def _loss_and_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    criterion = nn.CrossEntropyLoss()
    total, total_loss, correct = 0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            inputs, targets = x[i:i + batch_size], y[i:i + batch_size]
            outputs = model(inputs)
            total += targets.shape[0]
            total_loss += criterion(outputs, targets).item() * targets.shape[0]
            correct += outputs.max(1)[1].eq(targets).sum().item()
    return total_loss / total, correct / total


def origin_loss(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model = copy.deepcopy(model)
    model.eval()
    return _loss_and_acc(model, x_adv, y, batch_size)[0]


def module_mrc(model: nn.Module, module: str, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int,
               orders, *, epsilon: float = 0.1, epochs: int = 10, lr: float = 1.0) -> tuple[float, list[float]]:
    """MRC of one module and the ||dw|| / ||w|| after each epoch's rescale; ``orders()`` gives an epoch's order."""
    origin = origin_loss(model, x_adv, y, batch_size)
    layer_name = module + ".weight"
    cloned = copy.deepcopy(model)
    cloned.eval()
    init_param = None
    for name, param in cloned.named_parameters():
        if name == layer_name:
            param.requires_grad = True
            init_param = param.detach().clone()
        else:
            param.requires_grad = False
    optimizer = torch.optim.SGD(cloned.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    max_loss, ratios = 0.0, []
    for _ in range(epochs):
        order = orders()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_adv, y), batch_size=batch_size,
                                             sampler=order.tolist())
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = -1 * criterion(cloned(inputs), targets)
            loss.backward()
            optimizer.step()
        sd = cloned.state_dict()
        diff = sd[layer_name] - init_param
        times = torch.linalg.norm(diff) / torch.linalg.norm(init_param)
        if times > epsilon:
            diff = diff / times * epsilon
            sd[layer_name] = copy.deepcopy(init_param + diff)
            cloned.load_state_dict(sd)
        ratios.append(float(torch.linalg.norm(cloned.state_dict()[layer_name] - init_param)
                            / torch.linalg.norm(init_param)))
        total_loss, _ = _loss_and_acc(cloned, x_adv, y, batch_size)
        if total_loss > max_loss:
            max_loss = total_loss
    return max_loss - origin, ratios


def finetune_setup(model: nn.Module, layer: str, *, epochs: int = 10, lr: float = 0.001, momentum: float = 0.9,
                   wd: float = 5e-4):
    """(optimizer, scheduler); the scheduler steps once after each epoch (main.py l.327)."""
    for name, param in model.named_parameters():
        param.requires_grad = False
        if layer in name:
            param.requires_grad = True
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(epochs // 2)], gamma=0.1, last_epoch=-1)
    return optimizer, scheduler


def finetune_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                  targets: torch.Tensor) -> float:
    model.train()
    criterion = nn.CrossEntropyLoss()
    optimizer.zero_grad()
    outputs = model(inputs)
    loss = criterion(outputs, targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    return 100.0 * _loss_and_acc(model, x, y, batch_size)[1]


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    generator: torch.Generator, steps: int = STEPS) -> float:
    model.eval()
    total, correct = 0, 0
    for i in range(0, len(x), batch_size):
        images, labels = x[i:i + batch_size], y[i:i + batch_size]
        adv = torchattacks_pgd(model, images, labels, generator, steps=steps)
        with torch.no_grad():
            correct += model(adv).max(1)[1].eq(labels).sum().item()
        total += labels.size(0)
    return correct / total * 100


def best_epoch(epoch_states: list[dict], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int) -> tuple[int, dict]:
    """(1-based epoch, state) of theta_FT among the end-of-epoch states."""
    best_acc, best = 0, None
    for epoch, state in enumerate(epoch_states, 1):
        model.load_state_dict(state)
        acc = clean_accuracy(model, x, y, batch_size)
        if acc > best_acc:
            best_acc, best = acc, (epoch, state)
    return best


def interpolate(init_sd: dict, ft_sd: dict, alpha: float) -> dict:
    return {name: alpha * ft_sd[name] + (1 - alpha) * init_sd[name] for name in init_sd}


def interpolation_curve(init_sd: dict, ft_sd: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int, seed: int, steps: int = STEPS) -> list[tuple[float, float, float]]:
    """(alpha, clean %, robust %) for alpha in np.arange(0, 1.1, 0.1); every robustness evaluation starts its
    attack's random numbers from ``seed`` (test-side alignment)."""
    records = []
    for alpha in np.arange(0, 1.1, 0.1):
        model.load_state_dict(interpolate(init_sd, ft_sd, float(alpha)))
        clean = clean_accuracy(model, x, y, batch_size)
        robust = robust_accuracy(model, x, y, batch_size, torch.Generator().manual_seed(seed), steps)
        records.append((float(alpha), clean, robust))
    return records


def paper_choice(records: list[tuple[float, float, float]], tolerance: float = 0.1) -> float:
    """The alpha with the highest clean accuracy among those whose robust accuracy is no less than the original
    (alpha = 0) minus ``tolerance`` points; the first such alpha on ties."""
    origin_robust = records[0][2]
    best = records[0]
    for rec in records[1:]:
        if rec[2] >= origin_robust - tolerance and rec[1] > best[1]:
            best = rec
    return best[0]
