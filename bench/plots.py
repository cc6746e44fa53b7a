"""The paper's figures from a grid's results, with matplotlib (Agg), as PNG and PDF.

* Figure 1a (``fig1``): the feature gap (mean per-example L-inf distance between the last hidden features of
  clean and PGD-20 test images) after every epoch, one curve per fine-tuning method (mean over seeds, band =
  min..max). The gaps come from each run's per-epoch log, written only when the run had
  ``eval.feature_gap_every_epoch=true``; a method without them is drawn as a single marker at its final
  epoch (the gap measured in the final evaluation) and the figure says so in a red note.
* Figure 3 (``fig3``): t-SNE of the features of PGD-20 test images for one AFD run, before disentanglement,
  g(x'), and after, f1 = D1 g(x'). The exported model (results/models/<run>.pt) has D1 folded into its
  classifier (w' = w D1), so D1 is read from the run's last checkpoint (results/ckpt/<run>/last.pt, the EMA
  weights when the run used EMA, as the export did: key ``d1.weight``). It cannot be recovered from the export
  alone (w' = w D1 does not determine D1), so without the checkpoint fig3 stops with an error saying so. We
  check that the checkpoint's w D1 equals the exported w' before using it. The attack is PGD-20 (the run's
  eval settings) against the exported model, i.e. against w D1 g, as in the paper's evaluation.
* Figure 4 (``fig4``): AFD's clean (NAT, left axis) and PGD-20 (right axis) accuracy against alpha, beta and
  gamma, each swept with the other two at their defaults; x positions are evenly spaced as in the paper.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.config import ConfigError, RunConfig  # noqa: E402
from bench.report import DATASET_LABELS, MODEL_LABELS, load, method_label  # noqa: E402

NO_GAP_NOTE = "no per-epoch feature gap recorded"
NO_RUN_NOTE = "no finished run"


def _gapless(data: dict) -> tuple[list[str], list[str]]:
    """Methods with finished runs but no per-epoch gap, and methods with no finished run at all."""
    no_gap = [method_label(m) for m, d in data.items() if not d["curves"] and d["n_done"]]
    no_run = [method_label(m) for m, d in data.items() if not d["n_done"]]
    return no_gap, no_run


class PlotError(ConfigError):
    """A figure that cannot be drawn from these results; the CLI prints the one-line message (exit 2)."""


def save(fig: plt.Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def _where(df: pd.DataFrame) -> str:
    pairs = list(dict.fromkeys(zip(df.model, df.dataset)))
    return "; ".join(f"{MODEL_LABELS.get(m, m)} {DATASET_LABELS.get(d, d)}" for m, d in pairs)


# -- Figure 1a -------------------------------------------------------------------------------------------------
FIG1_METHODS = ("vaft", "afkd", "arrest", "afd")  # the paper's Figure 1a: vAFT, AFT+RGKD, ARREST, AFD


def at_defaults(df: pd.DataFrame) -> pd.Series:
    """Runs whose hyperparameters are all their method's defaults (a sweep's variants are not the method)."""
    from methods import resolve_hparams

    def ok(row: pd.Series) -> bool:
        return all(k not in row or pd.isna(row[k]) or row[k] == v
                   for k, v in ((f"hp.{k}", v) for k, v in resolve_hparams(row["method"], {})))

    return df.apply(ok, axis=1) if len(df) else pd.Series(dtype=bool)


def gap_curves(df: pd.DataFrame, methods: tuple[str, ...] | None = FIG1_METHODS) -> dict[str, dict[str, Any]]:
    """Per fine-tuning method (``methods``, None = all in the grid), at its default hyperparameters: epochs and
    the per-seed gap curves (from the per-epoch log), or the final gap."""
    out: dict[str, dict[str, Any]] = {}
    ft = df[df.parent_id.notna()]
    if methods is not None:
        ft = ft[ft.method.isin(methods)]
    ft = ft[at_defaults(ft)] if len(ft) else ft
    for method, g in ft.groupby("method", sort=False):
        done = g[g.status == "done"]
        curves = []
        for log in done.epoch_log:
            pts = [(e["epoch"], e["feature_gap"]) for e in (log or []) if isinstance(e.get("feature_gap"), (int, float))]
            if pts:
                curves.append(pts)
        out[method] = {"curves": curves, "final": done.feature_gap.dropna().tolist(),
                       "epochs": done.epochs.tolist(), "n_runs": len(g), "n_done": len(done)}
    return out


def fig1(df: pd.DataFrame, title: str = "", methods: tuple[str, ...] | None = FIG1_METHODS) -> plt.Figure:
    data = gap_curves(df, methods)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, d in data.items():
        label = method_label(method)
        if d["curves"]:
            epochs = sorted({e for c in d["curves"] for e, _ in c})
            table = np.full((len(d["curves"]), len(epochs)), np.nan)
            for i, c in enumerate(d["curves"]):
                for e, v in c:
                    table[i, epochs.index(e)] = v
            mean = np.nanmean(table, axis=0)
            (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=label + (f" ({len(d['curves'])} seeds)"
                                                                             if len(d["curves"]) > 1 else ""))
            if len(d["curves"]) > 1:
                ax.fill_between(epochs, np.nanmin(table, 0), np.nanmax(table, 0), color=line.get_color(), alpha=0.2)
        else:
            if d["final"]:
                ax.plot([max(d["epochs"])], [float(np.mean(d["final"]))], marker="x", ms=9, linestyle="none",
                        label=f"{label} (final epoch only)")
            else:
                ax.plot([], [], linestyle="none", label=f"{label} (no finished run)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("feature gap (mean L∞, clean vs PGD-20)")
    ax.set_title(title or f"Figure 1a: feature gap during fine-tuning ({_where(df)})", fontsize=9)
    no_gap, no_run = _gapless(data)
    notes = ([f"{NO_GAP_NOTE} for: {', '.join(no_gap)}\n(train with --set eval.feature_gap_every_epoch=true)"]
             if no_gap else []) + ([f"{NO_RUN_NOTE} for: {', '.join(no_run)} (bench run --grid ...)"] if no_run else [])
    if notes:
        ax.text(0.02, 0.97, "\n".join(notes), transform=ax.transAxes, va="top",
                fontsize=8, color="red", bbox={"facecolor": "white", "edgecolor": "red", "alpha": 0.9})
    if not data:
        ax.text(0.5, 0.5, "no fine-tuning run in this grid", transform=ax.transAxes, ha="center", color="red")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# -- Figure 4 --------------------------------------------------------------------------------------------------
def hparam_sweeps(df: pd.DataFrame, method: str = "afd",
                  names: tuple[str, ...] = ("alpha", "beta", "gamma")) -> dict[str, pd.DataFrame]:
    """For each hparam: value -> mean clean / PGD-20 over the runs whose other hparams are at their defaults."""
    from methods import resolve_hparams

    defaults = dict(resolve_hparams(method, {}))
    runs = df[(df.method == method) & (df.status == "done")]
    out = {}
    for name in names:
        others = [n for n in names if n != name and f"hp.{n}" in runs]
        mask = pd.Series(True, index=runs.index)
        for n in others:
            mask &= np.isclose(runs[f"hp.{n}"].astype(float), float(defaults[n]))
        sub = runs[mask]
        out[name] = sub.groupby(f"hp.{name}")[["clean", "pgd20"]].agg(["mean", "count"]).sort_index()
    return out


def fig4(df: pd.DataFrame) -> plt.Figure:
    sweeps = hparam_sweeps(df)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (name, tab) in zip(axes, sweeps.items()):
        ax2 = ax.twinx()
        xs = np.arange(len(tab))
        if len(tab):
            ax.plot(xs, tab[("clean", "mean")], color="tab:red", marker="^", label="NAT (clean)")
            ax2.plot(xs, tab[("pgd20", "mean")], color="tab:purple", marker="s", label="PGD-20")
        else:
            ax.text(0.5, 0.5, "no finished run", transform=ax.transAxes, ha="center", color="red")
            ax.plot([], [], color="tab:red", marker="^", label="NAT (clean)")
            ax2.plot([], [], color="tab:purple", marker="s", label="PGD-20")
        ax.set_xticks(xs, [f"{v:g}" for v in tab.index])
        ax.set_xlabel({"alpha": "α", "beta": "β", "gamma": "γ"}.get(name, name) + f" ({name})")
        ax.set_ylabel("clean accuracy (%)", color="tab:red")
        ax2.set_ylabel("PGD-20 accuracy (%)", color="tab:purple")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Figure 4: AFD accuracy against its hyperparameters ({_where(df)})", fontsize=10)
    fig.tight_layout()
    return fig


# -- Figure 3 --------------------------------------------------------------------------------------------------
def disentangler_weight(results: Path, rid: str, exported_w: "torch.Tensor | None" = None) -> "torch.Tensor":
    """D1 of an AFD run from its last checkpoint (EMA weights when present, as the export used)."""
    import torch

    for name in ("last.pt", "prev.pt"):
        path = results / "ckpt" / rid / name
        if path.exists():
            break
    else:
        raise PlotError(
            f"fig3 needs D1, which the exported model folds into its classifier and which cannot be recovered from "
            f"it; the run's checkpoint {results / 'ckpt' / rid / 'last.pt'} is gone: rerun the run to recreate it")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("ema") or ckpt["net"]
    if "d1.weight" not in state:
        raise PlotError(f"{path} has no d1.weight: run {rid} is not an AFD run with a disentangler")
    d1 = state["d1.weight"].float()
    if exported_w is not None:
        heads = [k for k in state if k.startswith("model.") and k.endswith(".weight")
                 and state[k].dim() == 2 and state[k].shape == exported_w.shape]
        if heads and not torch.allclose(state[heads[-1]].float() @ d1, exported_w.float(), atol=1e-4, rtol=1e-3):
            raise PlotError(f"{path}: w D1 does not match the exported classifier of run {rid}; the checkpoint is "
                             "not the one the model was exported from")
    return d1


def tsne_features(results: Path, rid: str, n: int = 1000, data_root: str | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Features of PGD-20 test images before (g(x')) and after (D1 g(x')) disentanglement, and labels."""
    import torch

    from bench.attacks import pgd
    from bench.data import load_dataset
    from bench.models import build_model, feature_extractor_and_head
    from bench.store import Store

    store = Store(results)
    res = store.read(rid)
    if res is None or res.get("status") != "done":
        raise PlotError(f"run {rid} has no finished result in {results}")
    blob = torch.load(store.model_path(rid), map_location="cpu", weights_only=True)
    model = build_model(blob["model"], blob["num_classes"], blob["in_channels"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    feats, head = feature_extractor_and_head(model)
    d1 = disentangler_weight(results, rid, head.weight.detach())
    cfg = res["config"]
    _, test, _ = load_dataset(cfg["dataset"], data_root)
    n = min(n, len(test))
    before, labels = [], []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n, 250):
        x = test.images[i:min(n, i + 250)].float().div(255)
        y = test.labels[i:min(n, i + 250)]
        x_adv = pgd(model, x, y, eps=cfg["eps"], step_size=cfg["eval"]["pgd_step_size"],
                    steps=cfg["eval"]["pgd_steps"], random_start=True, generator=gen)
        with torch.no_grad():
            before.append(feats(x_adv))
        labels.append(y)
    g = torch.cat(before)
    return {"before": g.numpy(), "after": (g @ d1.T).numpy(), "labels": torch.cat(labels).numpy()}


def fig3(features: dict[str, np.ndarray], title: str = "", seed: int = 0) -> plt.Figure:
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    labels = features["labels"]
    for ax, key, name in zip(axes, ("before", "after"), ("before disentanglement: g(x')",
                                                           "after disentanglement: f1 = D1 g(x')")):
        x = features[key]
        emb = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3)), init="pca",
                   random_state=seed).fit_transform(x)
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(emb[m, 0], emb[m, 1], s=4, label=str(c))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    axes[1].legend(title="class", fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   ncol=1 if len(np.unique(labels)) <= 20 else 2)
    fig.suptitle(title or "Figure 3: t-SNE of PGD-20 adversarial features", fontsize=10)
    fig.tight_layout()
    return fig


# -- entry point -----------------------------------------------------------------------------------------------
def plot(figure: str, grid: str | list[RunConfig], results: Path, out: Path, *, name: str = "", seeds: int = 1,
         run: str | None = None, n: int = 1000, data_root: str | None = None,
         methods: tuple[str, ...] | None = FIG1_METHODS) -> list[Path]:
    """Draw one figure for a grid; returns the PNG and PDF paths. ``methods``: fig1's curves (None = every
    fine-tuning method of the grid)."""
    df = load(grid, results, seeds)
    stem = f"{figure}_{name}" if name else figure
    if figure == "fig1":
        import sys

        no_gap, no_run = _gapless(gap_curves(df, methods))
        if no_gap:
            print(f"bench plot: {NO_GAP_NOTE} for {', '.join(no_gap)}: drawn as the final-epoch gap only; "
                  "train with --set eval.feature_gap_every_epoch=true for curves", file=sys.stderr)
        if no_run:
            print(f"bench plot: {NO_RUN_NOTE} for {', '.join(no_run)}: run the grid first", file=sys.stderr)
        fig = fig1(df, methods=methods)
    elif figure == "fig4":
        fig = fig4(df)
    elif figure == "fig3":
        afd = df[(df.method == "afd") & (df.status == "done")]
        rid = run or (afd.run_id.iloc[0] if len(afd) else None)
        if rid is None:
            raise PlotError("fig3 needs a finished AFD run in this grid (or --run RUN_ID)")
        row = df[df.run_id == rid]
        where = _where(row) if len(row) else rid
        fig = fig3(tsne_features(Path(results), rid, n=n, data_root=data_root),
                   title=f"Figure 3: t-SNE of PGD-20 adversarial features, AFD run {rid} ({where})")
    else:
        raise ValueError(f"unknown figure {figure}; known: fig1, fig3, fig4")
    try:
        return save(fig, Path(out), stem)
    finally:
        plt.close(fig)
