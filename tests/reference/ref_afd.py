"""Reference: the training step of changzhang777/AFD ``tl+sl.py`` (the code behind the AFD paper's numbers) as it
ran on the PyTorch its README asks for (< 1.2), transcribed for the differential tests in ``test_ref_afd.py``.
Written for this project from a reading of the files (repository HEAD c94cb6c); no code is copied and nothing
here imports our methods. Plain functions over dicts of tensors: ``P`` the student's parameters and ``B`` its
buffers (named as our ``AFD.net.state_dict()``: ``model.*``, ``d1.weight``, ``d2.weight``), ``T`` the frozen
teacher's state, ``opt`` the three optimizers' momentum buffers and the gradients they share.

Where each piece comes from:
- ``attack``: tl+sl.py ``criterion`` 170-207: the model in eval mode (170) -- ResNet_FS then returns
  linear(linear1(g(x))) = w D1 g(x) (models/resnet.py 267, 273-274); start x + U(-eps, eps), NOT clamped (173; the
  U(-eps, eps) numbers are passed in as ``delta``); 10 steps (34, 294) of size 0.007 (36, 292) on the batch-MEAN
  cross-entropy (179), x += step * sign(grad) (204-205), projection onto the eps-ball by min/max (206), clamp to
  [0, 1] (207); back to train mode (209); x_adv clamped once more (213).
- ``forward_fs``: models/resnet.py ResNet_FS.forward 258-278 in train mode (219): f1 = linear1(g) (266),
  w f1 (268), f2 = linear2(g.detach()) (269), w f2 with the SAME, live linear ``w`` (270). The backbone g is this
  suite's small_cnn (bench/models/architectures.py SmallCNN: four conv3x3-BN blocks, max-pool + ReLU after the first three,
  ReLU after the last, global average pool, fc + ReLU), spelt out layer by layer because of the next point.
- Old autograd: SGD stepped ``p.data`` in place (below), which autograd did not version-check, so a backward run
  after a step read the UPDATED weight wherever its formula reads a weight, and the forward's activations
  everywhere else. ``_Conv``, ``_BatchNorm``, ``_Linear`` write those formulas out: input-gradient from the weight
  as it is when the backward runs (conv: transposed conv with the current kernel; BN: current scale; linear:
  current matrix), weight-gradient from the saved input. ``late=False`` instead freezes a copy of each weight at
  the forward (what computing every gradient at the pre-step weights would give: NOT what ran).
- ``confused_label``: 221-228: pred = argmax of w f1; the second-best class where pred == y, pred where not.
- Teacher: main() 566-567 a plain ResNet18 from the natural checkpoint, put in eval mode (276); its penultimate
  features of the CLEAN batch under no_grad (230-233; models/resnet.py 100-114 returns them with prejection=True).
- ``afd_step``: ``train_align_loss`` 274-298 and ``criterion`` 157-266 for one batch: gradients zeroed (280-282,
  215-217); loss_neg = alpha CE(w f2, y'), backward, optimizer1.step (237-239); loss_cos = sigma mean cos(f1, f2)
  (f2 not detached: D2 collects a gradient nobody steps), backward, optimizer2.step (253-255);
  loss_rob = CE(w f1, y) + gamma (1 - mean cos(f1, g_P(x))), backward, optimizer.step (259-264). No zero_grad
  between the three. Returns (loss_rob, loss_neg, loss_cos) as the code does (266).
- Optimizers: main() 574-580: ``optimizer`` and ``optimizer2`` over every parameter but linear2 (D2), each with its
  own momentum buffers, ``optimizer1`` over D2; lr 0.025 (50), momentum 0.9 (28), weight decay 5e-4 (48).
- ``old_sgd_step``: torch.optim.SGD.step of PyTorch < 1.5: d_p = p.grad.data; weight decay added to d_p IN PLACE
  (so it stays in p.grad for the next optimizer); momentum buffer = d_p on its first step (zeros * momentum + d_p),
  then momentum * buf + d_p (dampening 0); p.data -= lr * buf (no Nesterov).
- ``lr_for_epoch``: ``adjust_learning_rate`` 106-113, applied to each optimizer at the start of every epoch (610-612).
- ``ema_update``: class EMA 355-379 (update_params, called after every batch, 298): decay min(0.999,
  (step+1)/(step+10)), shadow = decay shadow + (1 - decay) state for parameters AND buffers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BODY = (0, 2, 4, 6)  # small_cnn's conv-BN blocks (body.<k>.0 conv, body.<k>.1 BN); max-pool + ReLU after 0, 2, 4
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


# -- layers whose backward reads the weight when it runs (old autograd) -----------------------------------------
class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, late):
        ctx.save_for_backward(x)
        ctx.weight = weight if late else weight.detach().clone()
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        w = ctx.weight.detach()
        gx = torch.nn.grad.conv2d_input(x.shape, w, g, padding=1) if ctx.needs_input_grad[0] else None
        gw = torch.nn.grad.conv2d_weight(x, w.shape, g, padding=1) if ctx.needs_input_grad[1] else None
        return gx, gw, None


class _BatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm2d: batch statistics (biased variance) normalise; the scale read at backward."""

    @staticmethod
    def forward(ctx, x, gamma, beta, late):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        invstd = 1.0 / torch.sqrt(var + BN_EPS)
        xhat = (x - mean) * invstd
        ctx.save_for_backward(xhat, invstd)
        ctx.gamma = gamma if late else gamma.detach().clone()
        return xhat * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, g):
        xhat, invstd = ctx.saved_tensors
        m = g.shape[0] * g.shape[2] * g.shape[3]
        gbeta = g.sum(dim=(0, 2, 3))
        ggamma = (g * xhat).sum(dim=(0, 2, 3))
        gamma = ctx.gamma.detach().view(1, -1, 1, 1)
        gx = gamma * invstd / m * (m * g - gbeta.view(1, -1, 1, 1) - xhat * ggamma.view(1, -1, 1, 1))
        return gx, ggamma, gbeta, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, late):
        ctx.save_for_backward(x)
        ctx.weight = weight if late else weight.detach().clone()
        ctx.has_bias = bias is not None
        out = x @ weight.t()
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        gx = g @ ctx.weight.detach() if ctx.needs_input_grad[0] else None
        gw = g.t() @ x if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


# -- forwards -------------------------------------------------------------------------------------------------
def backbone_train(P: dict, B: dict, x: Tensor, late: bool = True, prefix: str = "model.") -> Tensor:
    """g(x) in train mode (batch statistics; running statistics updated as nn.BatchNorm2d does)."""
    h = x
    for k in BODY:
        c, bn = f"{prefix}body.{k}.0.", f"{prefix}body.{k}.1."
        h = _Conv.apply(h, P[c + "weight"], late)
        with torch.no_grad():  # running statistics: momentum 0.1, unbiased batch variance
            n = h.shape[0] * h.shape[2] * h.shape[3]
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)
            B[bn + "running_mean"].mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * mean)
            B[bn + "running_var"].mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * var)
            B[bn + "num_batches_tracked"].add_(1)
        h = _BatchNorm.apply(h, P[bn + "weight"], P[bn + "bias"], late)
        h = F.relu(F.max_pool2d(h, 2)) if k != BODY[-1] else F.relu(h)
    h = h.mean(dim=(2, 3))
    return F.relu(_Linear.apply(h, P[prefix + "fc.weight"], P[prefix + "fc.bias"], late))


def backbone_eval(S: dict, x: Tensor, prefix: str = "model.") -> Tensor:
    """g(x) in eval mode (running statistics), plain differentiable ops (the attack and the teacher)."""
    h = x
    for k in BODY:
        c, bn = f"{prefix}body.{k}.0.", f"{prefix}body.{k}.1."
        h = F.conv2d(h, S[c + "weight"], padding=1)
        scale = S[bn + "weight"] / torch.sqrt(S[bn + "running_var"] + BN_EPS)
        h = (h - S[bn + "running_mean"].view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + S[bn + "bias"].view(1, -1, 1, 1)
        h = F.relu(F.max_pool2d(h, 2)) if k != BODY[-1] else F.relu(h)
    h = h.mean(dim=(2, 3))
    return F.relu(h @ S[prefix + "fc.weight"].t() + S[prefix + "fc.bias"])


def logits_eval(P: dict, B: dict, x: Tensor, disentangler: bool = True) -> Tensor:
    """models/resnet.py 273-274 (eval, logit=False): w D1 g(x)."""
    S = {**P, **B}
    f = backbone_eval(S, x)
    if disentangler:
        f = f @ P["d1.weight"].t()
    return f @ P["model.classifier.weight"].t() + P["model.classifier.bias"]


def forward_fs(P: dict, B: dict, x: Tensor, late: bool = True, disentangler: bool = True):
    """models/resnet.py 258-272 in train mode: ((w f1, w f2), (f1, f2)); without the disentangler (vAFT+A):
    ((w g, None), (g, None))."""
    w, b = P["model.classifier.weight"], P["model.classifier.bias"]
    g = backbone_train(P, B, x, late)
    if not disentangler:
        return (_Linear.apply(g, w, b, late), None), (g, None)
    f1 = _Linear.apply(g, P["d1.weight"], None, late)
    f2 = _Linear.apply(g.detach(), P["d2.weight"], None, late)
    return (_Linear.apply(f1, w, b, late), _Linear.apply(f2, w, b, late)), (f1, f2)


def teacher_features(T: dict, x: Tensor) -> Tensor:
    """tl+sl.py 230-233: the natural model's penultimate features of CLEAN x, eval mode, no grad."""
    with torch.no_grad():
        return backbone_eval(T, x, prefix="")


# -- pieces of criterion ----------------------------------------------------------------------------------------
def attack(P: dict, B: dict, x: Tensor, y: Tensor, delta: Tensor, *, eps: float = 8 / 255, step_size: float = 0.007,
           steps: int = 10, disentangler: bool = True) -> Tensor:
    """tl+sl.py 170-213."""
    P0 = {k: v.detach() for k, v in P.items()}
    x_adv = x.detach() + delta.detach()  # 173: no clamp before the first gradient
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(logits_eval(P0, B, x_adv, disentangler), y)  # 179, batch mean
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return torch.clamp(x_adv, 0.0, 1.0).detach()  # 213


def confused_label(logit_nat: Tensor, y: Tensor) -> Tensor:
    """tl+sl.py 221-228."""
    pred = logit_nat.detach().max(1)[1]
    second = torch.scatter(logit_nat.detach(), 1, pred.unsqueeze(1), -100000).max(1)[1]
    wrong = pred != y
    second[wrong] = pred[wrong]
    return second


def cos_mean(u: Tensor, v: Tensor) -> Tensor:
    """torch.cosine_similarity(u, v, -1).mean(), written out."""
    return ((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).mean()


# -- optimizers -------------------------------------------------------------------------------------------------
def make_opt(P: dict) -> dict:
    """main() 574-580: the parameter groups, one momentum-buffer dict per optimizer, and the shared p.grad."""
    rest = [n for n in P if not n.startswith("d2.")]
    return {"optimizer1": [n for n in P if n.startswith("d2.")], "optimizer2": rest, "optimizer": rest,
            "buf": {"optimizer1": {}, "optimizer2": {}, "optimizer": {}}, "grad": {}}


def zero_grad(opt: dict) -> None:
    """Old Optimizer.zero_grad: existing gradients zeroed in place (detach_ + zero_), missing ones left missing."""
    for g in opt["grad"].values():
        g.zero_()


def backward(loss: Tensor, P: dict, opt: dict, retain_graph: bool = False) -> None:
    """loss.backward(): gradients ADDED to p.grad (created on first use)."""
    names = [n for n in P if P[n].requires_grad]
    grads = torch.autograd.grad(loss, [P[n] for n in names], retain_graph=retain_graph, allow_unused=True)
    for n, g in zip(names, grads):
        if g is None:
            continue
        if n in opt["grad"]:
            opt["grad"][n].add_(g)
        else:
            opt["grad"][n] = g.detach().clone()


def old_sgd_step(P: dict, opt: dict, which: str, *, lr: float, momentum: float = 0.9,
                 weight_decay: float = 5e-4) -> None:
    """torch.optim.SGD.step before PyTorch 1.5 (dampening 0, no Nesterov) over optimizer ``which``."""
    bufs = opt["buf"][which]
    for n in opt[which]:
        if n not in opt["grad"]:
            continue  # p.grad is None
        d_p = opt["grad"][n]  # p.grad.data: the same tensor
        d_p.add_(P[n].detach(), alpha=weight_decay)  # in place
        if n not in bufs:
            buf = bufs[n] = torch.zeros_like(d_p)
            buf.mul_(momentum).add_(d_p)
        else:
            buf = bufs[n]
            buf.mul_(momentum).add_(d_p)
        P[n].data.add_(buf, alpha=-lr)  # p.data: no version bump, the graph keeps reading this tensor


def afd_step(P: dict, B: dict, opt: dict, T: dict | None, x: Tensor, y: Tensor, delta: Tensor, *, lr: float,
             alpha: float = 0.05, sigma: float = 0.25, gamma: float = 25.0, late: bool = True,
             disentangler: bool = True, **attack_kw) -> dict:
    """One batch of ``train_align_loss`` (274-298). ``disentangler=False`` is our reading of vAFT+A on this code
    (no linear1/linear2, loss_neg and loss_cos absent: their zero-weighted backward leaves zero gradients, so
    optimizer2's step applies weight decay and momentum only). ``T=None`` or gamma 0: no alignment (vAFT+D)."""
    zero_grad(opt)  # 280-282, 215-217
    x_adv = attack(P, B, x, y, delta, disentangler=disentangler, **attack_kw)  # 170-213
    (logit_nat, logit_adv), (feat1, feat2) = forward_fs(P, B, x_adv, late, disentangler)  # 219
    rec = {"x_adv": x_adv}
    if disentangler:
        pred_ = confused_label(logit_nat, y)  # 221-228
        rec["y_confused"] = pred_
    feat_nat = teacher_features(T, x) if T is not None else None  # 230-233
    if disentangler:
        loss_neg = alpha * F.cross_entropy(logit_adv, pred_)  # 237
        backward(loss_neg, P, opt, retain_graph=True)  # 238
        old_sgd_step(P, opt, "optimizer1", lr=lr)  # 239
        loss_cos = sigma * cos_mean(feat1, feat2)  # 253: f2 not detached
        backward(loss_cos, P, opt, retain_graph=True)  # 254
        rec.update(loss_neg=loss_neg.detach(), loss_cos=loss_cos.detach())
    else:
        for n in opt["optimizer2"]:  # the zero gradients a zero-weighted backward would leave
            opt["grad"].setdefault(n, torch.zeros_like(P[n]))
    old_sgd_step(P, opt, "optimizer2", lr=lr)  # 255
    loss_rob = F.cross_entropy(logit_nat, y)  # 261
    if feat_nat is not None and gamma:
        loss_sl = 1 - cos_mean(feat1, feat_nat)  # 259
        loss_rob = loss_rob + gamma * loss_sl  # 262
    backward(loss_rob, P, opt)  # 263: through the weights line 255 changed
    old_sgd_step(P, opt, "optimizer", lr=lr)  # 264
    rec["loss_rob"] = loss_rob.detach()
    return rec


def lr_for_epoch(epoch: int, base_lr: float = 0.025) -> float:
    """The lr during 1-based ``epoch``: ``adjust_learning_rate`` (106-113) applied for epochs 1..epoch."""
    lr = base_lr
    for e in range(1, epoch + 1):
        if e == 11:
            lr = lr * 4 / 5
        elif e > 10 and (e + 1) % 2 == 0:
            lr /= 2
    return lr


def ema_update(shadow: dict, state: dict, step: int, alpha: float = 0.999) -> int:
    """EMA.update_params (369-379) with buffer_ema=True; returns the new step count."""
    decay = min(alpha, (step + 1) / (step + 10))
    for k in shadow:
        shadow[k].copy_(decay * shadow[k] + (1 - decay) * state[k])
    return step + 1
