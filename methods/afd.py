"""AFD: Adversarial Fine-tuning via Disentanglement (Zhou et al., AAAI 2025, "Mitigating Feature Gap for
Adversarial Robustness by Feature Disentanglement"), and its Table 3 ablations vAFT+D and vAFT+A.

Model: backbone g, classifier w (both from the natural model), disentanglers D1, D2 = Linear(d, d, bias=False)
initialised to the identity. On an adversarial x' (PGD on the eval-mode logits w D1 g(x), eq. 2):
    f1 = D1 g(x'),  f2 = D2 g(x').detach()                                            (eq. 1)
    y' = argmax_{c != y} (w f1)_c                  confused label                      (eq. 3)
    L1 = CE(w f2, y')                              "updates D2 only"                   (eq. 3)
    L2 = -D(f1, f2.detach())                       pushes f1 away from f2              (eq. 4)
    L3 = CE(w f1, y) + gamma D(f1, g_P(x).detach())  g_P: frozen natural model, CLEAN x (eq. 5)
    L  = alpha L1 + beta L2 + L3,  D(u, v) = 1 - cos(u, v)                            (eq. 6)
alpha, beta, gamma = 0.05, 0.25, 25 (paper, "Implementation Details"). The EMA of weights and buffers (decay
min(0.999, (t+1)/(t+10))) is the model evaluated. At inference D1 folds into the classifier, w' = w D1 (D1 has no
bias, so this is exact) and the exported model is a plain backbone + Linear.

As run (``update_order="as_run"``, the default: the grids run AFD the way its public code ran). Per batch, from ONE
forward pass at the batch's starting weights, three SGD steps with three optimizers and never a zero_grad between
them, on the PyTorch < 1.2 the code's README asks for:
    1. backward(alpha L1); optimizer1.step() over D2.          L1 is computed with the live w, so w (weight and
                                                                bias) collects alpha L1's gradient too;
    2. backward(beta L2);  optimizer2.step() over all but D2.  Steps w on alpha L1, backbone and D1 on beta L2;
    3. backward(L3);       optimizer.step()  over all but D2.  Steps on everything accumulated since the batch began.
Old SGD added the weight decay INTO p.grad in place (``LegacySGD``), so step 3 re-applies step 2's: weight decay
acts 3x per batch on everything but D2 (1x on D2), alpha L1 acts 2x on w, beta L2 2x on backbone and D1, with two
momentum buffers (optimizer2's, optimizer's) for the same weights. Old SGD wrote p.data, which autograd did not
version-check, so step 3's backward ran through the weights step 2 had just changed: every input-gradient formula
(conv, linear, BatchNorm scale) read the NEW weights, every weight-gradient the forward's activations.
``StaleGraph`` reproduces exactly that on current PyTorch (which refuses such a backward). ``update_order="joint"``
is eq. 6 read alone: one SGD step on alpha L1 + beta L2 + L3 with L1 routed to D2 only (w applied detached).

Public code checked (changzhang777/AFD, HEAD c94cb6c): tl+sl.py 23-50 (defaults: batch 128, momentum 0.9, eps
8/255, PGD-10, step 0.007, alpha 0.05, sigma 0.25 = our beta, gamma 25, 20 epochs, wd 5e-4, lr 0.025), 106-113
(adjust_learning_rate), 157-266 (criterion: attack 170-213, forward 219, confused label 221-228, teacher 230-233,
the three backward/step pairs 237-239, 253-255, 259-264), 274-298 (train_align_loss: zero_grad 280-282, EMA
update 298), 355-379 (EMA), 566-580 (models and the three optimizers), 603-613 (DataParallel, per-epoch lr);
README ("Pytorch of a version lower than 1.2.0"); models/resnet.py 230-278 (ResNet_FS: linear1 = D1, linear2 = D2
= torch.eye, no bias; eval mode returns linear(linear1(g)); train mode returns (w f1, w f2), (f1, f2) with f2 =
linear2(g.detach())), 100-114 (the teacher's features with prejection=True). Old SGD's step: d_p = p.grad.data;
d_p.add_(weight_decay, p.data); momentum buffer = d_p on its first step, momentum * buf + d_p after; p.data.add_(-lr,
buf). tests/reference/ref_afd.py transcribes all of it; tests/reference/test_ref_afd.py checks our step against it
(3 steps, float64: losses, x_adv, every parameter and buffer, all momentum buffers, to 1e-10).

Fidelity notes (paper vs code, or silent). Sizes measured by ``.venv/bin/python tests/reference/test_ref_afd.py``
in two settings: [A] the tests' float64 setting (small_cnn, random 16x16 images, batch 8) and [B] small_cnn
naturally trained 3 epochs on digits (32x32, fp32, batch 128); D1 != D2 (both I + 0.05 N(0, 1)), 3 steps.
"x% of the update" = ||variant - as_run|| / ||as_run - start|| per parameter group (backbone, w, D1, D2).
- Network: the AFD code builds this row's ResNets (changzhang777/AFD models/resnet.py) with an unpadded first
  convolution, so the paper grids run it, and its natural parent, on ``resnet18_afd`` / ``resnet50_afd``
  (bench/grid/grids.py ``AFD_CODE_ROWS``); the difference from the padded ``resnet18`` is measured in
  docs/methods.md#networks.
- Update rule: eq. 6 (one objective) vs Algorithm 1 and the code (three steps). We follow the code. "joint" after 3
  steps is [A] backbone 7.8%, w 14%, D1 1.2%, D2 9.5% of the update away from as_run ([B] 2.5%, 9.5%, 1.4%, 2.8%;
  relative to the weights themselves [A] 0.28%, 1.6%, 0.09%, 0.006%).
- Weight decay per batch, measured as (step with wd - step without) / (lr wd theta): as_run 3.00 on backbone, w and
  D1, 1.00 on D2 [A, B]; "joint" 1.00. (The retired ``update_order="official"``, three steps with current SGD,
  gave 2.00: neither the paper nor what ran; dropped.) Paper: "weight decay of 5e-4", once.
- L1's gradient: eq. 3 says it updates D2 only; in the code it also reaches w, which steps 2 and 3 both step on
  it: measured 2.00x on w, 1.00x on D2 [A, B]. beta L2: 2.00x on backbone and D1 [A, B] (paper: once).
- Backward through updated weights (old autograd, above). Versus computing every gradient at the pre-step weights,
  ONE step differs by [A] backbone 0.17%, D1 0.008% ([B] 0.12%, 0.010%) of its update, w and D2 0 (their
  gradients read no updated weight); the difference then feeds the next attacks: after 3 steps [A] 7.0%, w 2.1%,
  D1 0.38%, D2 1.0% ([B] 2.2%, 0.15%, 0.29%, 0.94%). Residual of our emulation: ours vs the reference (layers
  with hand-written backward reading the live weights) after 3 steps [A] <= 1e-14 of the update, 2e-15 of the
  weights (vAFT+D, vAFT+A alike); vs a literal emulation (no hooks, old SGD writing p.data, so that current
  autograd reads the live weights without a version check) bitwise equal [A, B]. Under bf16 autocast the
  weights' bf16 copies are re-made from the live weights; not doing so would move 3 steps by 2.4% of the backbone
  update [B] (bitwise equal gradients before any update: checked). Not emulated, because the GPU count is unknown:
  tl+sl.py:21 makes two GPUs visible and 603 wraps the model in DataParallel; on two GPUs BatchNorm statistics
  are per half batch and the second replica's backward reads its pre-step weight copies (the second effect is
  bounded by the 0.1-0.2% per step above). Cost: as_run is ~10% slower per step than joint (one more backward
  through the backbone; [B], 6.68 s vs 6.02 s median on a loaded 2-core CPU; 7% in another run).
- Training attack: the paper's eq. 2 writes one sign step of size eps from x; its text says PGD-10 and gives no
  step size; the code runs PGD-10, step 0.007, from x + U(-eps, eps) with the first gradient at that UNCLAMPED
  start (173-179), batch-mean CE, the model in eval mode (170) on w D1 g(x) (resnet.py 273-274), each iterate
  projected on the ball then clamped to [0, 1]. We do the same (``clamp_start=False``); ``clamp_start=True``
  clamps the start to [0, 1] before the first gradient (every later iterate is clamped either way). Raw starts
  outside [0, 1]: [A] 1.6%, [B] 19.4% of entries; clamping changes [A] 40%, [B] 64% of the final x_adv entries, L3
  by [A] 0.09% [B] 0.02%, one step's update by [A] 21%, [B] 4.3% (backbone). Our attack sums the CE instead of
  averaging it: only the sign of its gradient is used; 0 of 6,144 [A] and 0 of 131,072 [B] x_adv entries differ.
- Confused label: the code takes the argmax of w f1 and, where that is the true label, the runner-up (221-228):
  that is argmax_{c != y}, ours; 0 of 4,096 random rows differ (ties aside).
- L2: the code minimises sigma mean cos(f1, f2) with f2 NOT detached (253); the paper -beta D(f1, f2^-) = beta (cos
  - 1): the same gradient on what is stepped, and D2's extra gradient is never stepped (optimizer1 ran before;
  zero_grad at the next batch): the reference keeps it undetached and agrees with ours to 1e-14 of the update.
- Learning rate 0.025 with the AFT schedule (code 50, 106-113; the text's 0.0025 is a typo, see methods/vaft.py).
- Teacher: a separate plain ResNet18 from the natural checkpoint in eval mode (276), features of the CLEAN batch
  (233); the paper's g(x; theta_P) agrees. EMA: the code averages every state entry after every batch (298),
  including BatchNorm's integer num_batches_tracked (float average copied back into an integer tensor); we copy
  integer buffers instead; BatchNorm with momentum 0.1 never reads that counter: no effect.
- Silent in the paper, from the code: D1, D2 identity-initialised without bias; weight decay on every parameter
  (BatchNorm and biases too); gradients zeroed in place, not set to None (same steps: every parameter gets a
  gradient before its first step); Nesterov off, dampening 0.
- vAFT+D (Table 3) = the code with --gamma 0. vAFT+A (no disentangler) has no public code; our reading is the
  code's update with the disentangler's terms removed: three steps become two, the middle one on a zero gradient
  (what a zero-weighted backward leaves), i.e. weight decay + momentum only, so the ablations keep AFD's
  optimiser dynamics (3x weight decay, EMA) and differ from it only in their losses; "joint" gives them one step.
- Under norm l2 (not in the paper or its code): the attack of ``bench.eval.attacks.pgd(norm="l2")``
  (docs/evaluation-threat-models.md) with the step scaled by eps / (8/255) (``Method.attack_step``), from the same
  unclamped start rule.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.config import TrainConfig
from bench.models.architectures import feature_extractor_and_head
from methods.base import COUNT, WEIGHT, FeatureMap, Method, OneOf, Range, angular_distance, register

AFD_RECIPE = TrainConfig(epochs=20, lr=0.025, weight_decay=5e-4, schedule="aft", ema=True)
UPDATE_ORDERS = ("as_run", "joint")


def confused_label(logits: Tensor, y: Tensor) -> Tensor:
    """argmax over the wrong classes: the most likely label that is not the true one (eq. 3)."""
    masked = logits.detach().scatter(1, y[:, None], float("-inf"))
    return masked.argmax(1)


class _Head(nn.Module):
    """w D g(x): the classifier applied after a disentangler (attack target, and Table 4's f1/f2 heads)."""

    def __init__(self, model: nn.Module, disentangler: nn.Module):
        super().__init__()
        self.model, self.disentangler = model, disentangler
        self._feats, self._w = feature_extractor_and_head(model)

    def forward(self, x: Tensor) -> Tensor:
        return self._w(self.disentangler(self._feats(x)))


def _identity_linear(d: int) -> nn.Linear:
    lin = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d))
    return lin


class LegacySGD(torch.optim.SGD):
    """``torch.optim.SGD`` as it stepped before PyTorch 1.5 (tl+sl.py's README asks for < 1.2).

    The one difference that matters: weight decay is added INTO ``p.grad`` in place (the old code took
    ``d_p = p.grad.data`` and called ``d_p.add_(weight_decay, p.data)``), so an optimizer stepping the same
    un-zeroed gradient later applies the earlier weight decay again. Momentum is kept in its own buffer, which is
    ``d_p`` itself on the first step and ``momentum * buf + (1 - dampening) * d_p`` after; the step is
    ``p -= lr * buf`` (Nesterov: ``lr * (d_p + momentum * buf)``); ``p.grad`` is never touched by the momentum.
    Current SGD adds the weight decay out of place and leaves ``p.grad`` alone. Same hyperparameters and
    state-dict layout (``momentum_buffer``) as ``torch.optim.SGD``, so the schedule and checkpoints work as usual.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("maximize") or group.get("differentiable"):
                raise NotImplementedError("LegacySGD: maximize / differentiable are not supported")
            wd, mom, damp = group["weight_decay"], group["momentum"], group["dampening"]
            # The same arithmetic as a loop over the parameters, one multi-tensor (_foreach) operation per line:
            # AFD steps three optimizers per batch, and per-parameter kernels made its step launch-bound on GPUs.
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            d_ps = [p.grad for p in params]
            if wd != 0:
                torch._foreach_add_(d_ps, params, alpha=wd)  # in place: the weight decay stays in p.grad
            if mom != 0:
                states = [self.state[p] for p in params]
                kept = [i for i, st in enumerate(states) if st.get("momentum_buffer") is not None]
                if kept:  # buf = momentum * buf + (1 - dampening) * d_p
                    bufs = [states[i]["momentum_buffer"] for i in kept]
                    torch._foreach_mul_(bufs, mom)
                    torch._foreach_add_(bufs, [d_ps[i] for i in kept], alpha=1 - damp)
                for st, g in zip(states, d_ps):
                    if st.get("momentum_buffer") is None:  # the first step: buf = d_p
                        st["momentum_buffer"] = g.clone()
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                d_ps = torch._foreach_add(d_ps, bufs, alpha=mom) if group["nesterov"] else bufs
            torch._foreach_add_(params, d_ps, alpha=-group["lr"])
        return loss


class StaleGraph(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks that make a backward read the parameters as they are WHEN IT RUNS, as PyTorch < 1.5 did.

    Old SGD updated ``p.data`` in place, which autograd did not version-check, so a backward through a graph
    built before an optimizer step used the updated weights wherever its formulas read a weight (the
    input-gradients of conv and linear layers, BatchNorm's scale), and the forward's activations everywhere
    else (weight-gradients, ReLU masks, BatchNorm's batch statistics, softmax and cosine outputs). Current
    PyTorch refuses such a backward. Under these hooks a tensor saved for backward that shares storage with one
    of ``params`` is kept by reference (read live, no version check); an autocast (bf16) copy of one of
    ``params`` is re-made from the live parameter when the backward needs it; every other saved tensor keeps the
    usual in-place check (an error if it was modified before the backward).
    """

    def __init__(self, params):
        params = list(params)
        self._storages = {p.untyped_storage().data_ptr() for p in params}
        self._ids = {id(p) for p in params}
        super().__init__(self._pack, self._unpack)

    def _pack(self, t: Tensor):
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage: the usual check
            return ("saved", t.detach(), t._version)
        if ptr in self._storages:
            return ("live", t.detach(), None)
        base = t._base if t._base is not None else t
        fn = base.grad_fn
        if fn is not None and fn.name() == "ToCopyBackward0" and fn.next_functions:
            src = getattr(fn.next_functions[0][0], "variable", None)
            if (src is not None and id(src) in self._ids and base.shape == src.shape
                    and base.stride() == src.stride() and base.storage_offset() == 0):
                return ("cast", src.detach(), (base.dtype, t.shape, t.stride(), t.storage_offset()))
        return ("saved", t.detach(), t._version)

    @staticmethod
    def _unpack(packed) -> Tensor:
        kind, t, extra = packed
        if kind == "live":
            return t
        if kind == "cast":
            dtype, shape, stride, offset = extra
            return t.to(dtype).as_strided(shape, stride, offset)
        if t._version != extra:
            raise RuntimeError("a tensor saved for backward was modified in place before the backward")
        return t


@register
class AFD(Method):
    name = "afd"
    label = "AFD"
    plan_seconds_per_epoch = 46.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = "natural"
    summary = "adversarial fine-tuning via disentanglement (Zhou et al. AAAI 2025)"
    recipe = AFD_RECIPE
    use_disentangler = True
    use_alignment = True

    ranges = {"alpha": WEIGHT, "beta": WEIGHT, "gamma": WEIGHT, "steps": COUNT, "step_size": Range(0.0),
              "update_order": OneOf(UPDATE_ORDERS)}

    @dataclass(frozen=True)
    class Hparams:
        alpha: float = 0.05  # weight of L1 (paper, Implementation Details; tl+sl.py:40 --alpha)
        beta: float = 0.25  # weight of L2 (paper; tl+sl.py:42 --sigma)
        gamma: float = 25.0  # weight of the alignment in L3 (paper; tl+sl.py:44 --gamma)
        steps: int = 10  # training PGD steps (tl+sl.py:34 --num-steps)
        step_size: float = 0.007  # training PGD step (tl+sl.py:36 --step-size)
        # First PGD gradient at the raw start x + U(-eps, eps) (False, tl+sl.py:173-179) or at its clamp to [0, 1].
        clamp_start: bool = False
        # "as_run": tl+sl.py's three old-PyTorch SGD steps per batch (237-264); "joint": one step on eq. 6.
        update_order: str = "as_run"

    @classmethod
    def compile_problem(cls, hp):
        if getattr(hp, "update_order", "as_run") == "joint":
            return None
        # measured: after 2 compiled steps the weights were 47x their norm away from eager (joint: 6e-8)
        return (f"{cls.name}'s as-run update backpropagates through weights changed since the forward (StaleGraph's "
                "saved-tensor hooks), which a compiled backward does not honour")

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        self.feats, self.w = feature_extractor_and_head(model)
        d = self.w.in_features
        if self.use_disentangler:
            self.net["d1"] = _identity_linear(d)
            self.net["d2"] = _identity_linear(d)
        if self.use_alignment:
            teacher = self.frozen_parent()
            self.teacher_feats, _ = feature_extractor_and_head(teacher)
            self._teacher = teacher  # kept outside self.net: frozen, not checkpointed, not averaged

    # -- training ---------------------------------------------------------------------------------------------
    def attack_model(self) -> nn.Module:
        return _Head(self.model, self.net["d1"]) if self.use_disentangler else self.model

    def attack(self, batch) -> Tensor:
        hp = self.hp
        return self.pgd(batch.x, batch.y, steps=hp.steps, step_size=hp.step_size, model=self.attack_model(),
                        clamp_start=hp.clamp_start)

    def losses(self, batch, x_adv: Tensor | None = None) -> dict[str, Tensor]:
        hp = self.hp
        if x_adv is None:
            x_adv = self.attack(batch)
        h = self.feats(x_adv)
        out: dict[str, Tensor] = {}
        if self.use_disentangler:
            f1 = self.net["d1"](h)
            f2 = self.net["d2"](h.detach())
            logits1 = self.w(f1)
            if hp.update_order == "as_run":
                logits2 = self.w(f2)  # the code uses the live w: w also receives alpha L1's gradient
            else:
                # L1 reaches D2 only: w is applied detached, and f2 comes from detached backbone features.
                logits2 = F.linear(f2, self.w.weight.detach(),
                                   None if self.w.bias is None else self.w.bias.detach())
            out["l1"] = F.cross_entropy(logits2, confused_label(logits1, batch.y))
            out["l2"] = -angular_distance(f1, f2.detach())
        else:
            f1 = h
            logits1 = self.w(f1)
        l3 = F.cross_entropy(logits1, batch.y)
        if self.use_alignment and hp.gamma:
            with torch.no_grad():
                target = self.teacher_feats(batch.x)
            # at least fp32 (a bf16 teacher's features), never less than the run's precision (float64 tests)
            out["align"] = angular_distance(f1, target.to(torch.promote_types(target.dtype, torch.float32)))
            l3 = l3 + hp.gamma * out["align"]
        out["l3"] = l3
        out["adv_acc"] = (logits1.argmax(1) == batch.y).float().mean()
        return out

    def loss(self, batch, step):
        out = self.losses(batch)
        total = out["l3"]
        if self.use_disentangler:
            total = total + self.hp.alpha * out["l1"] + self.hp.beta * out["l2"]
        out["loss"] = total
        return out

    def configure_optimizers(self, train: TrainConfig):
        if self.hp.update_order == "joint":
            return super().configure_optimizers(train)
        # tl+sl.py:574-580: optimizer1 over D2 (linear2); optimizer2 and optimizer over everything else, each
        # with its own momentum buffers; all with the same lr, momentum and weight decay. Old-PyTorch SGD.
        rest = [p for n, p in self.net.named_parameters() if not n.startswith("d2.") and p.requires_grad]
        sgd = lambda ps: LegacySGD(ps, lr=train.lr, momentum=train.momentum,  # noqa: E731
                                   weight_decay=train.weight_decay, nesterov=train.nesterov)
        d2 = [sgd(list(self.net["d2"].parameters()))] if self.use_disentangler else []
        return [*d2, sgd(rest), sgd(rest)]

    def train_step(self, batch, step):
        if self.hp.update_order == "joint":
            return super().train_step(batch, step)
        hp = self.hp
        x_adv = self.attack(batch)
        params = [p for p in self.net.parameters() if p.requires_grad]
        # tl+sl.py:215-217 (and 280-282): gradients zeroed in place once per batch, never between the steps.
        # Materialising zeros for parameters without a gradient yet changes nothing for AFD (every parameter gets
        # one before its first step) and is what the code's zero-weighted backward would give vAFT+A (below).
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.detach_()
                p.grad.zero_()
        with StaleGraph(params):  # the three backward passes share one forward, as in the code (line 219)
            out = self.losses(batch, x_adv)
        *opt_d2, opt2, opt3 = self.optimizers
        if self.use_disentangler:
            (hp.alpha * out["l1"]).backward(retain_graph=True)  # tl+sl.py:237-238: D2 and w (w f2 uses the live w)
            opt_d2[0].step()  # 239: D2 only
            (hp.beta * out["l2"]).backward(retain_graph=True)  # 253-254: backbone and D1
            opt2.step()  # 255: all but D2, on alpha L1 (w) + beta L2, plus weight decay left in p.grad
        else:
            opt2.step()  # vAFT+A: the code's middle step with no L1/L2 (zero gradient): weight decay + momentum
        out["l3"].backward()  # 259-263: through the weights step 255 just changed (StaleGraph)
        opt3.step()  # 264: all but D2, on everything accumulated since line 215
        out["loss"] = out["l3"] + (hp.alpha * out["l1"] + hp.beta * out["l2"] if self.use_disentangler else 0)
        return out

    # -- export and metrics --------------------------------------------------------------------------------------
    def export(self, net: nn.ModuleDict) -> nn.Module:
        model = copy.deepcopy(net["model"])
        if not self.use_disentangler:
            return model
        _, w = feature_extractor_and_head(model)
        with torch.no_grad():
            w.weight.copy_(w.weight @ net["d1"].weight)  # w' = w D1 (exact: D1 has no bias)
        return model

    def gap_features(self, net: nn.ModuleDict) -> nn.Module:
        """Figure 1a measures AFD's gap on its intrinsic features f1 = D1 g(x), which the export folds into the
        classifier (the exported model's own features are g)."""
        if not self.use_disentangler:
            return super().gap_features(net)  # vAFT+A classifies from g
        return FeatureMap(net["model"], net["d1"], what="f1 = D1 g (intrinsic features)")

    def extra_metrics(self, net, test, evaluator) -> dict[str, float]:
        if not self.use_disentangler:
            return {}
        # Table 4: natural accuracy of w f1 and of w f2 on clean test images.
        f1 = _Head(net["model"], net["d1"])
        f2 = _Head(net["model"], net["d2"])
        return {"f1_clean": evaluator.accuracy(f1), "f2_clean": evaluator.accuracy(f2)}


@register
class VAFTD(AFD):
    name = "vaft_d"
    label = "vAFT+D"
    plan_seconds_per_epoch = 42.0  # not in AFD Table 5: vAFT + AFD's disentangler, between vAFT (37) and AFD (46)
    plan_seconds_guessed = True
    summary = "AFD ablation vAFT+D: the disentangler without the alignment (AFD Table 3)"
    use_alignment = False

    @dataclass(frozen=True)
    class Hparams(AFD.Hparams):
        gamma: float = 0.0  # no alignment term


@register
class VAFTA(AFD):
    name = "vaft_a"
    label = "vAFT+A"
    plan_seconds_per_epoch = 40.0  # not in AFD Table 5: vAFT + feature alignment to the frozen parent, like AFKD (40)
    plan_seconds_guessed = True
    summary = "AFD ablation vAFT+A: vAFT plus the feature alignment, no disentangler (AFD Table 3)"
    use_disentangler = False

    @dataclass(frozen=True)
    class Hparams:
        gamma: float = 25.0  # AFD's alignment weight
        steps: int = 10
        step_size: float = 0.007
        clamp_start: bool = False
        update_order: str = "as_run"
