"""The report and the figures, from the result files in tests/fixtures/report (made by tests/make_report_fixtures.py).

Every declared table renders, in Markdown, LaTeX and CSV, with and without the paper's numbers, to exactly the stored
file under tests/fixtures/report/expected/. After an intended change of the output, regenerate them with
``python tests/make_report_fixtures.py --expected`` and review the diff.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_report_fixtures import HERE, RESULTS, cfg, fig4_runs, table_runs  # noqa: E402

from bench.core.config import run_id  # noqa: E402
from bench.grid.runs import expand  # noqa: E402
from bench.report import load, load_paper, report  # noqa: E402
from bench.report.declarations import TABLES  # noqa: E402

EXT = {"markdown": "md", "latex": "tex", "csv": "csv"}
NAMES = ["table1", "table2", "table3", "table4", "table5", "generic"]
CASES = [(name, fmt, compare, None) for name in NAMES for fmt in EXT
         for compare in ((None, "paper") if name != "generic" else (None,))]


def render_case(name: str, fmt: str, compare: str | None) -> str:
    return report(table_runs(), RESULTS, fmt, table=None if name == "generic" else name, compare=compare)


def test_fixture_files_match_the_configs():
    """Run ids are config hashes: if the config schema changed, the fixtures must be regenerated."""
    have = {p.stem for p in (RESULTS / "runs").glob("*.json")}
    want = {run_id(c) for c in expand(table_runs() + fig4_runs())}
    assert have <= want and len(want - have) == 1, (
        "fixture result files do not match the fixture configs: run `python tests/make_report_fixtures.py "
        "--expected` and review the diff")


@pytest.mark.parametrize("name,fmt,compare", [c[:3] for c in CASES])
def test_table_renders_to_expected_text(name, fmt, compare):
    path = HERE / "expected" / f"{name}{'_paper' if compare else ''}.{EXT[fmt]}"
    assert render_case(name, fmt, compare) == path.read_text(encoding="utf-8")


def test_failed_corrupt_and_missing_runs_are_dashes_with_a_footnote():
    md = report(table_runs(), RESULTS, "markdown", table="table1")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    for method in ("Free-AT", "ATAS", "FGSM-GA"):  # failed, missing, corrupt
        assert rows[method].split("|")[2].strip() == "—"
    assert "- —: 3 of 15 runs not finished (1 failed, 1 corrupt, 1 missing):" in md
    assert "failed: non-finite loss in epoch 3" in md
    assert "ATAS RN18/CIFAR-10 seed 0" in md and "missing: no result file" in md
    assert "corrupt: corrupt result file runs/" in md


def test_seeds_give_mean_and_std_and_the_cells_say_how_many():
    md = report(table_runs(), RESULTS, "markdown", table="table1")
    afd = next(line for line in md.splitlines() if line.startswith("| AFD "))
    cells = [c.strip() for c in afd.split("|")[2:-1]]
    # Most cells are one seed: the caption says so once, the two-seed cells say n=2. No mark: on 100 test images
    # every lead in the fixture is within the noise rule.
    assert cells[0] == "85.03 ± 0.18 (n=2)" and cells[4] == "64.90"
    assert "One run (seed) per cell unless marked (n=k)" in md and "**" not in md and "<u>" not in md
    assert "Clean on the first 100 test images, PGD-20 on the first 100, AutoAttack on the first 50" in md
    df = load(table_runs(), RESULTS)
    two = df[(df.method == "afd") & (df.model == "resnet18") & (df.dataset == "cifar10") & (df.status == "done")]
    assert len(two) == 2 and math.isclose(two.clean.mean(), 85.025, abs_tol=1e-9)
    assert set(two.n_aa) == {50.0}  # the count the result records
    csv = report(table_runs(), RESULTS, "csv", table="table1")
    assert csv.splitlines()[0] == "Method,group,column,mean,std,n,n_runs,mark,unreliable"
    assert "AFD,CIFAR-10,Clean,85.03,0.18,2,2,," in csv and "AFD,CIFAR-100,Clean,64.90,,1,1,," in csv
    assert "\n# Quantitative evaluations of all methods on ResNet18 (accuracy, %). One run (seed)" in csv


def _runs(rows: list[tuple[str, int, float]], n_test: int = 10000, method_key: str = "clean") -> "pd.DataFrame":
    """A DataFrame as load() gives it, of finished runs (method, seed, accuracy) on resnet18 / cifar10."""
    import pandas as pd

    return pd.DataFrame([{"run_id": f"{m}{s}", "status": "done", "violations": "", "method": m, "model": "resnet18",
                          "dataset": "cifar10", "seed": s, method_key: v, "n_clean": n_test, "n_pgd": n_test,
                          "n_aa": n_test} for m, s, v in rows])


def _marks(df, n_test=None) -> dict[str, str]:
    from bench.report.build import build
    from bench.report.declarations import CLEAN, S, Table

    t = Table("t", rows=[S(m, method=m) for m in dict.fromkeys(df.method)], cols=(CLEAN,), rank=True)
    b = build(t, df)
    return {lab[0]: line[0].mark for lab, line in zip(b.row_labels, b.cells)}


def test_bold_only_where_the_best_is_ahead_beyond_the_noise_rule():
    """The best is bold only when it leads the second by more than twice the noise: the larger of the seed spread
    and the binomial error on the recorded test images; the second is underlined only when it leads the third so."""
    from bench.report.noise import binomial_noise

    # 3 points apart on 10,000 images (binomial noise ~0.7): best and second both clear.
    clear = _runs([("a", 0, 60.0), ("a", 1, 60.2), ("b", 0, 57.0), ("b", 1, 57.1), ("c", 0, 54.0), ("c", 1, 54.1)])
    assert _marks(clear) == {"a": "best", "b": "second", "c": ""}
    # The same means on 200 images: 3 points is within 2 x binomial noise (~4.9 x 2), so no mark at all.
    assert 2 * binomial_noise(60.1, 57.05, 200) > 3.05
    assert _marks(clear.assign(n_clean=200)) == {"a": "", "b": "", "c": ""}
    # A large seed spread hides the lead as well, even on many images.
    spread = _runs([("a", 0, 66.0), ("a", 1, 54.0), ("b", 0, 57.0), ("b", 1, 57.1)])
    assert _marks(spread) == {"a": "", "b": ""}
    # Best clear of the second, second within noise of the third: bold only.
    close = _runs([("a", 0, 62.0), ("b", 0, 57.0), ("c", 0, 56.8)])
    assert _marks(close) == {"a": "best", "b": "", "c": ""}
    # The marks render in every format.
    from bench.report.build import build
    from bench.report.declarations import CLEAN, S, Table
    from bench.report.render import RENDERERS

    b = build(Table("t", rows=[S(m, method=m) for m in "abc"], cols=(CLEAN,), rank=True), clear)
    md, tex, csv = (RENDERERS[f](b) for f in ("markdown", "latex", "csv"))
    assert "**60.10 ± 0.14**" in md and "<u>57.05 ± 0.07</u>" in md and "Bold: the column's best" in md
    assert "\\textbf{60.10 $\\pm$ 0.14}" in tex and "\\underline{57.05 $\\pm$ 0.07}" in tex
    assert "a,,Clean,60.10,0.14,2,2,best" in csv and "b,,Clean,57.05,0.07,2,2,second" in csv
    assert "Mean ± sample standard deviation over 2 seeds. All on the first 10000 test images." in md


def test_a_cell_of_another_number_of_seeds_says_so():
    from bench.report.build import build
    from bench.report.declarations import CLEAN, S, Table
    from bench.report.render import render_latex, render_markdown

    df = _runs([("a", 0, 60.0), ("a", 1, 60.2), ("a", 2, 60.1), ("b", 0, 57.0), ("b", 1, 57.1), ("c", 0, 54.0)])
    b = build(Table("t.", rows=[S(m, method=m) for m in "abc"], cols=(CLEAN,)), df)
    md = render_markdown(b)
    assert "| a | 60.10 ± 0.10 |" in md and "| b | 57.05 ± 0.07 (n=2) |" in md and "| c | 54.00 (n=1) |" in md
    assert b.caption.startswith("t. Mean ± sample standard deviation over 3 seeds; a cell marked (n=k) averages k.")
    assert "57.05 $\\pm$ 0.07 (n=2)" in render_latex(b)


def test_dagger_rows_show_the_papers_pgd10_without_a_delta_against_our_pgd20():
    """Free-AT, FGSM-GA and ATAS in Table 1 are PGD-10 numbers from Huang et al. (2023): the paper's number is
    shown with its †, clean and AA keep their Δ, PGD-20 (and the Avg that contains it) have none."""
    import io

    import pandas as pd

    from bench.report.build import build
    from bench.report.render import render_csv, render_markdown

    def runs(method, clean, pgd, aa):
        return _runs([(method, 0, clean)]).assign(pgd20=pgd, aa=aa, avg=(clean + pgd + aa) / 3)

    b = build(TABLES["table1"], runs("free_at", 80.0, 45.0, 40.0), compare="paper")
    md = render_markdown(b)
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| Free-AT | ours"))
    paper, delta = ([c.strip() for c in lines[k].split("|")[3:7]] for k in (i + 1, i + 2))
    assert paper == ["78.37†", "40.90†", "36.00†", "51.76†"]
    assert delta == ["+1.63", "—", "+4.00", "—"]
    assert "evaluated with PGD-10: no Δ against our PGD-20" in md
    csv = pd.read_csv(io.StringIO(render_csv(b)), comment="#")
    free = csv[(csv.Method == "Free-AT") & (csv.group == "CIFAR-10")].set_index("column")
    assert free.loc["Clean", "delta"] == 1.63 and free.loc["AA", "delta"] == 4.0
    assert free[["delta"]].loc[["PGD-20", "Avg"]].isna().all().all()
    # A row the paper measured itself keeps every Δ.
    own = build(TABLES["table1"], runs("pgd_at", 84.0, 48.0, 43.0), compare="paper")
    assert own.row_labels[0] == ("PGD-AT",) and not any(c.no_delta for c in own.cells[0])
    assert "|  | Δ | −0.43 | −0.82 | −0.68 | −0.65 |" in render_markdown(own)


def test_load_is_one_dataframe_of_every_run():
    df = load(table_runs(), RESULTS)
    assert len(df) == len(expand(table_runs()))
    assert set(df.status) == {"done", "failed", "missing", "corrupt"}
    for col in ("run_id", "method", "model", "dataset", "seed", "clean", "pgd20", "aa", "avg", "f1_clean",
                "seconds_per_epoch", "total_seconds", "device_name", "epoch_log"):
        assert col in df
    vaft = df[(df.method == "vaft") & (df.dataset == "cifar10") & (df.seed == 0)].iloc[0]
    parent = df[df.run_id == vaft.parent_id].iloc[0]
    assert vaft.total_seconds == vaft.train_seconds + parent.train_seconds  # Table 5 counts the pre-training


def test_paper_numbers_are_consistent():
    """The transcription of Tables 1-5: Avg is the mean of the three accuracies (to the paper's rounding, which
    is off by up to 0.013 in two cells), Delta = f1 - f2, and every declared table has its file."""
    for name in ("table1", "table2"):
        p = load_paper(name).dropna(subset=["clean"])
        assert ((p[["clean", "pgd20", "aa"]].mean(axis=1) - p.avg).abs() < 0.015).all()
    assert len(load_paper("table1")) == 30 and len(load_paper("table2")) == 21
    p = load_paper("table4")
    assert ((p.f1_clean - p.f2_clean - p.f_delta).abs() < 1e-9).all()
    t5 = load_paper("table5").set_index("method")
    assert t5.loc["vaft", "total_seconds"] == 1330 and t5.loc["afd", "seconds_per_epoch"] == 46
    for name, t in TABLES.items():
        assert t.paper is None or not load_paper(t.paper).empty, name


def _latex_document(body: str) -> str:
    return ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
            "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n" + body + "\\end{document}\n")


@pytest.mark.parametrize("name", [n for n in NAMES])
def test_latex_structure_and_compiles(name, tmp_path):
    for compare in (None, "paper") if name != "generic" else (None,):
        tex = render_case(name, "latex", compare)
        assert tex.startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")
        for cmd in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\caption{"):
            assert cmd in tex
        assert tex.count("{") == tex.count("}")
        ncols = tex.split("\\begin{tabular}{")[1].split("}")[0]
        body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule")[0]
        for line in body.splitlines():
            if line.endswith("\\\\"):
                assert line.count(" & ") == len(ncols) - 1, line
        if shutil.which("pdflatex") is None:
            continue  # structure checked above; compiling needs a LaTeX (apt-get install texlive-latex-recommended)
        doc = tmp_path / f"{name}_{compare}.tex"
        doc.write_text(_latex_document(tex))
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert (tmp_path / f"{name}_{compare}.pdf").exists()


def test_pdflatex_present_or_skip():
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex here: the LaTeX tables were checked for structure only "
                    "(apt-get install texlive-latex-base texlive-latex-recommended to compile them)")


def test_markdown_is_a_github_table():
    for name in NAMES:
        md = render_case(name, "markdown", None)
        lines = [x for x in md.splitlines() if x.startswith("|")]
        widths = {line.count(" | ") for line in lines[2:]}
        assert len(widths) == 1 and lines[1].count("|") == lines[0].count("|") - lines[0].count("\\|")


# -- figures ---------------------------------------------------------------------------------------------------
def _legend_labels(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def _errorbars(ax):
    from matplotlib.container import ErrorbarContainer

    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _bar_halfwidths(container) -> list[float]:
    """The +-error of each point of an errorbar container (half the length of each vertical bar)."""
    (bars,) = container.lines[2]
    return [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]


def _overlaps(fig, artist, ax) -> bool:
    fig.canvas.draw()
    a, b = artist.get_window_extent(), ax.get_window_extent()
    return a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1


def test_fig1_one_curve_per_method_and_says_when_no_gap(tmp_path):
    import matplotlib.pyplot as plt

    from bench.report import plots
    from bench.report.frame import load

    runs = [cfg(m, seed=s) for m in ("vaft", "arrest", "afd") for s in (0, 1) if not (m == "arrest" and s)]
    df = load(runs, RESULTS)
    fig = plots.fig1(df)
    ax = fig.axes[0]
    labels = _legend_labels(ax.get_legend())
    assert labels == ["vAFT (2 seeds)", "ARREST (final epoch only)", "AFD (2 seeds)"]  # the paper's order
    bars = _errorbars(ax)
    assert len(bars) == 3 and len(bars[0].lines[0].get_xdata()) == 20  # one point per epoch
    assert bars[0].has_yerr and bars[2].has_yerr  # two seeds: their seed-to-seed SE
    assert not bars[1].has_yerr  # one ARREST seed, no SE recorded: none drawn, and the caption says so
    assert ax.get_xlabel() == "epoch" and "feature gap" in ax.get_ylabel()
    note = " ".join(t.get_text() for t in ax.texts).replace("\n", " ")
    assert plots.NO_GAP_NOTE in note and "ARREST" in note and "vAFT" not in note
    assert plots.NO_RUN_NOTE not in note
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "none known for ARREST" in caption
    paths = plots.save(fig, tmp_path, "fig1")
    plt.close(fig)
    # runs that never finished are named as such, not as runs without a per-epoch gap
    empty = plots.fig1(load(runs, tmp_path / "no-results"))
    note = " ".join(t.get_text() for t in empty.axes[0].texts).replace("\n", " ")
    assert plots.NO_RUN_NOTE in note and "AFD" in note and plots.NO_GAP_NOTE not in note
    plt.close(empty)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)


def _flat_gap_df(se: float = 0.05, of: str | None = None):
    """The fixture's vAFT and AFD runs with nearly flat per-epoch gaps, each with a recorded test-sample SE."""
    from bench.report.frame import load

    df = load([cfg(m, seed=s) for m in ("vaft", "afd") for s in (0, 1)], RESULTS)
    logs = []
    for log in df.epoch_log:
        new = []
        for e in log or []:
            e = dict(e)
            if "feature_gap" in e:
                e.update(feature_gap=0.300 + 0.0005 * (e["epoch"] % 2), feature_gap_se=se, feature_gap_n=100)
                if of is not None:
                    e["feature_gap_of"] = of
            new.append(e)
        logs.append(new)
    df["epoch_log"] = logs
    return df


def test_fig1_shows_the_noise_and_no_narrower_a_range():
    """Nearly flat gaps (spread 0.0005) with a test-sample SE of 0.05: error bars of 0.05 are drawn, the y-axis spans
    at least +-2 SE around the data, and the legend sits outside the plot."""
    import matplotlib.pyplot as plt

    from bench.report import plots
    fig = plots.fig1(_flat_gap_df(0.05))
    ax = fig.axes[0]
    bars = _errorbars(ax)
    assert len(bars) == 2 and all(c.has_yerr for c in bars)
    for c in bars:
        assert _bar_halfwidths(c) == pytest.approx([0.05] * 20)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 4 * 0.05 and lo <= 0.300 - 2 * 0.05 + 1e-9 and hi >= 0.3005 + 2 * 0.05 - 1e-9
    assert not _overlaps(fig, ax.get_legend(), ax)
    assert "±1 SE" in ax.get_legend().get_title().get_text()
    plt.close(fig)


def test_fig1_caption_says_what_was_measured_for_each_method():
    import matplotlib.pyplot as plt

    from bench.report import plots
    # results written before the measured features were recorded: g for every method, and a red note for AFD
    fig = plots.fig1(_flat_gap_df())
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    for words in ("||f(x) − f(x')||∞", "PGD-20", "the EMA for methods that keep one", "f1 = D1 g for AFD",
                  "penultimate", f"{plots.UNRECORDED_GAP_OF} for vAFT, AFD", "first 100 test images", "±1 SE",
                  "PGD-20 (eps 8/255, step 0.003, random start)"):  # the runs' own attack sizes
        assert words in caption, words
    assert "AFD: gap measured on g, not on f1 = D1 g" in " ".join(t.get_text() for t in fig.axes[0].texts).replace("\n", " ")
    plt.close(fig)
    # as recorded by the evaluator: no note
    fig = plots.fig1(_flat_gap_df(of="f1 = D1 g (intrinsic features)"))
    assert "f1 = D1 g (intrinsic features) for vAFT, AFD" in " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert not fig.axes[0].texts
    plt.close(fig)


def test_fig1_command_line(tmp_path, capsys):
    from bench.report import plots
    paths = plots.plot("fig1", [cfg("vaft"), cfg("afd")], RESULTS, tmp_path, name="fixture")
    assert [p.name for p in paths] == ["fig1_fixture.png", "fig1_fixture.pdf"]


def test_fig4_two_curves_per_hparam(tmp_path):
    import matplotlib.pyplot as plt

    from bench.report import plots
    from bench.report.frame import load

    df = load(fig4_runs() + [cfg("afd")], RESULTS)
    sweeps = plots.hparam_sweeps(df)
    assert list(sweeps["alpha"].index) == [0.01, 0.05, 0.2] and list(sweeps["gamma"].index) == [4.0, 25.0, 30.0]
    fig = plots.fig4(df)
    main_axes, twins = fig.axes[:3], fig.axes[3:]
    for ax, twin, name in zip(main_axes, twins, ("alpha", "beta", "gamma")):
        assert name in ax.get_xlabel() and "clean" in ax.get_ylabel() and "PGD-20" in twin.get_ylabel()
        assert len(_errorbars(ax)) == 1 and len(_errorbars(twin)) == 1
    (legend,) = fig.legends
    assert _legend_labels(legend) == ["NAT (clean), ±1 SE", "PGD-20, ±1 SE"]
    assert not any(_overlaps(fig, legend, ax) for ax in fig.axes)
    plots.save(fig, tmp_path, "fig4")
    plt.close(fig)


def test_fig4_error_bars_are_the_binomial_error_and_the_axes_span_it():
    """The fixture's sweep is nearly flat (clean moves by 0.8 points over alpha, by 0.08 over gamma) on N = 100 test
    images: each point carries its binomial SE sqrt(p(1-p)/N) (about 3.6 points at 85%), and each y-axis spans at
    least +-2 SE around its data instead of zooming in on the differences."""
    import matplotlib.pyplot as plt

    from bench.report import plots
    from bench.report.frame import load

    df = load(fig4_runs() + [cfg("afd")], RESULTS)
    sweeps = plots.hparam_sweeps(df)
    fig = plots.fig4(df)
    for i, name in enumerate(("alpha", "beta", "gamma")):
        tab = sweeps[name]
        for ax, metric in ((fig.axes[i], "clean"), (fig.axes[3 + i], "pgd20")):
            means = tab[(metric, "mean")].to_numpy()
            (bars,) = _errorbars(ax)
            se = [plots.binomial_se(m, 100) for m in means]
            # the default value has two seeds 0.25 points apart: their seed SE (0.125) is below the binomial one
            assert _bar_halfwidths(bars) == pytest.approx(se)
            lo, hi = ax.get_ylim()
            centre = (means.min() + means.max()) / 2
            assert lo <= centre - 2 * max(se) and hi >= centre + 2 * max(se), (name, metric, lo, hi)
            assert hi - lo > 5 * (means.max() - means.min())  # a sub-noise wiggle does not fill the panel
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "clean N = 100" in caption and "binomial" in caption
    plt.close(fig)


def test_ylim_rule_on_nearly_flat_data():
    import matplotlib.pyplot as plt

    from bench.report.plots import binomial_se, set_ylim_with_noise

    se = binomial_se(56.8, 1000)
    assert se == pytest.approx(100 * math.sqrt(0.568 * 0.432 / 1000))
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [57.2, 56.35, 57.2])  # matplotlib alone would zoom onto the 0.85-point wiggle
    lo, hi = set_ylim_with_noise(ax, [57.2, 56.35, 57.2], [se] * 3)
    assert (lo, hi) == ax.get_ylim()
    assert lo <= 56.775 - 2 * se and hi >= 56.775 + 2 * se
    # bounds shift the window instead of cutting it: near 100% the span is kept
    lo, hi = set_ylim_with_noise(ax, [99.5, 99.6], [0.5, 0.5], bounds=(0, 100))
    assert hi == 100 and hi - lo >= 4 * 0.5
    # without any error, flat data get a small window, not a zero-height one
    lo, hi = set_ylim_with_noise(ax, [0.3, 0.3], [0.0, 0.0])
    assert lo < 0.3 < hi
    plt.close(fig)


def test_fig3_tsne_uses_d1_from_the_checkpoint(tmp_path):
    """A random small CNN on the embedded digits, exported with D1 folded in, as train.py writes it."""
    import json

    import torch

    from bench.report import plots
    from bench.models.architectures import build_model, feature_extractor_and_head

    torch.manual_seed(0)
    c = cfg("afd", model="small_cnn", dataset="digits")
    rid = run_id(c)
    model = build_model("small_cnn", 10, 1)
    _, head = feature_extractor_and_head(model)
    d = head.in_features
    d1 = torch.eye(d) + 0.1 * torch.randn(d, d)
    net_state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    net_state["d1.weight"] = d1
    with torch.no_grad():
        head.weight.copy_(head.weight @ d1)
    (tmp_path / "ckpt" / rid).mkdir(parents=True)
    torch.save({"ema": net_state, "net": net_state}, tmp_path / "ckpt" / rid / "last.pt")
    (tmp_path / "models").mkdir()
    torch.save({"model": "small_cnn", "num_classes": 10, "in_channels": 1, "run_id": rid,
                "state_dict": model.state_dict()}, tmp_path / "models" / f"{rid}.pt")
    from bench.core.config import to_dict

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{rid}.json").write_text(json.dumps(
        {"run_id": rid, "status": "done", "config": to_dict(c), "metrics": {"clean": 0.1}}))
    feats = plots.tsne_features(tmp_path, rid, n=60)
    assert feats["before"].shape == (60, d) and feats["after"].shape == (60, d) and len(feats["labels"]) == 60
    assert abs(feats["after"] - feats["before"] @ d1.T.numpy()).max() < 1e-4
    fig = plots.fig3(feats)
    assert len(fig.axes) == 2 and all(ax.get_xlabel() == "t-SNE 1" for ax in fig.axes)
    for ax, key in zip(fig.axes, ("before", "after")):  # each panel's class separation, with its binomial error
        acc = plots.knn_accuracy(feats[key], feats["labels"])
        assert f"{acc:.1f} ± {plots.binomial_se(acc, 60):.1f}% (±1 SE, n = 60)" in ax.get_title()
    assert "t-SNE axes have no units" in " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert len(fig.axes[1].get_legend().get_texts()) == len(set(feats["labels"].tolist()))
    # A checkpoint that does not belong to the export is refused, a missing one explained.
    torch.save({"ema": {**net_state, "d1.weight": torch.eye(d)}, "net": net_state}, tmp_path / "ckpt" / rid / "last.pt")
    with pytest.raises(plots.PlotError, match="does not match"):
        plots.tsne_features(tmp_path, rid, n=10)
    shutil.rmtree(tmp_path / "ckpt")
    with pytest.raises(plots.PlotError, match="cannot be recovered"):
        plots.tsne_features(tmp_path, rid, n=10)


# -- the claims check (bench report --claims) --------------------------------------------------------------------
def test_noise_and_verdict_rule():
    import pandas as pd

    from bench.report.noise import noise, verdict

    a, b = pd.Series([50.0, 52.0]), pd.Series([40.0, 40.0])
    # seed part sqrt(2/2 + 0) = 1.0; binomial part at 1,000 images sqrt(.51*.49/1000 + .4*.6/1000)*100 = 2.1
    assert noise(a, b, 1000) == pytest.approx(100 * math.sqrt((0.51 * 0.49 + 0.4 * 0.6) / 1000))
    assert noise(pd.Series([50.0, 60.0]), b, 10**6) == pytest.approx(math.sqrt(50 / 2))  # seeds dominate
    assert verdict(11.0, 5.0) == "holds" and verdict(-11.0, 5.0).startswith("does not hold")
    assert verdict(9.0, 5.0).startswith("not distinguishable") and verdict(math.nan, 1.0) == "not measured"


def test_claims_from_the_fixture_results():
    from bench.report.claims import claims

    text = claims(table_runs() + fig4_runs(), RESULTS)
    assert "Setting: RN18, CIFAR-10." in text  # the setting with the most fine-tuning runs, not CIFAR-100's
    assert "Runs: 18 of 21 finished (3 not finished" in text
    assert "| vAFT | 2 | 84.12 ± 0.18 | 51.46 ± 0.08 | 45.56 ± 0.08 | 83.93 / 51.40 / 45.48 |" in text
    assert "- PGD-20: AFD 52.76 vs the best other, vAFT 51.46: difference +1.30, noise 7.06 -> not distinguishable" in text
    assert "AFD's gap is the flattest" in text and "Ends above its first epoch on every seed (the sign alone; the noise rule is below): vAFT." in text
    assert "ARREST | no per-epoch gap recorded" in text  # the fixture's ARREST has no per-epoch gaps
    assert "Δ = f1 − f2 40.50 ± 0.71" in text and "-> holds." in text
    assert "AFD / vAFT: 1.24 (means), 1.24 (medians); paper 1.24" in text
    assert "| alpha | 0.01, 0.05, 0.2 |" in text and text.count("insensitive within noise") == 3


def test_the_gap_claim_applies_the_noise_rule_to_each_methods_change():
    """Claim 2's verdict: a change first -> last beyond twice its noise (the larger of the seed SE of the
    changes and the test-sample SE of the two gaps) grows or falls; AFD's must stay within it."""
    import numpy as np
    import pandas as pd

    from bench.report.claims import gap_change, gap_verdicts

    def log(gaps, se=0.005):
        return [{"epoch": i + 1, "feature_gap": g, "feature_gap_se": se} for i, g in enumerate(gaps)]

    df = pd.DataFrame([
        {"method": "vaft", "seed": 0, "epoch_log": log([0.30, 0.33, 0.36])},
        {"method": "vaft", "seed": 1, "epoch_log": log([0.31, 0.35, 0.38])},
        {"method": "afd", "seed": 0, "epoch_log": log([0.40, 0.45, 0.405])},
        {"method": "afkd", "seed": 0, "epoch_log": log([0.50, 0.45, 0.40], se=0.01)},
        {"method": "arrest", "seed": 0, "epoch_log": log([0.50, 0.56, 0.53])},
    ])
    ch, nz, rise, at = gap_change(df, "vaft")
    assert ch == pytest.approx(0.065) and at == 3 and rise == pytest.approx(0.065)
    # seed SE of the changes (0.06, 0.07): 0.005; jitter: steps (0.03, 0.03) and (0.04, 0.03), SDs 0 and
    # 0.00707, mean / sqrt(2) = 0.0025; the test-sample SE sqrt(2) * 0.005 = 0.00707 is the largest
    assert nz == pytest.approx(math.sqrt(2) * 0.005)
    ch, nz, rise, at = gap_change(df, "afd")
    assert ch == pytest.approx(0.005) and rise == pytest.approx(0.05) and at == 2
    assert nz == pytest.approx(float(np.std([0.05, -0.045], ddof=1)))  # one seed: its jitter is the noise
    # a rise of +0.03 first -> last, 4 test-sample SEs, inside the curve's own jitter (steps +0.06, -0.03)
    ch, nz, _, _ = gap_change(df, "arrest")
    assert ch == pytest.approx(0.03) and 2 * math.sqrt(2) * 0.005 < ch <= 2 * nz
    text = "\n".join(gap_verdicts(df, ["vaft", "afkd", "afd"]))
    assert "ARREST +0.030" in "\n".join(gap_verdicts(df, ["arrest"])) and "-> flat within noise" in \
        "\n".join(gap_verdicts(df, ["arrest"]))
    assert "vAFT +0.065" in text and "-> grows" in text and "AFKD -0.100" in text and "-> falls" in text
    assert "AFD +0.005" in text and "flat within noise" in text
    assert "grows under vAFT, AFKD: does not hold; it stays flat under AFD: holds." in text
    # no recorded SE (results written before it was): no verdict line rather than one without noise
    bare = pd.DataFrame([{"method": "vaft", "seed": 0, "epoch_log": [{"epoch": 1, "feature_gap": 0.3},
                                                                    {"epoch": 2, "feature_gap": 0.4}]}])
    assert gap_change(bare, "vaft") is None and gap_verdicts(bare, ["vaft"]) == []


def test_claims_of_a_grid_without_rift_a_sweep_or_the_ablations_say_so(tmp_path):
    from bench.report.claims import claims

    text = claims([c for c in table_runs() if c.method in ("vaft", "afd")], RESULTS)
    assert "| RiFT |" not in text and "| vAFT | 2 |" in text
    assert "### 5. AFD insensitive" in text and "not in this grid (no run varies alpha, beta or gamma)" in text
    assert "not in this grid (no vAFT+D or vAFT+A runs)" in text
    full = claims(table_runs() + fig4_runs(), RESULTS)
    assert "| RiFT |" in full and "- AFD against vAFT+A: clean" in full


def test_claims_command_line(capsys):
    from bench.cli import main

    assert main(["report", "--grid", "cpu", "--results", str(RESULTS), "--claims"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## The claims, measured") and "Runs: 0 of 28 finished" in out


def test_evaluation_seconds_reach_table5_and_the_compute_line(tmp_path):
    """Each result's recorded seconds per measurement (metrics.seconds) and per-epoch probes (probe_seconds)
    appear under Table 5 and in the claims' compute line; without them both keep their old wording."""
    import json

    from bench.report.claims import claims

    shutil.copytree(RESULTS, tmp_path / "r")
    for p in (tmp_path / "r" / "runs").glob("*.json"):
        try:
            res = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue  # the fixture's corrupt file stays corrupt
        if res.get("status") == "done":
            res["metrics"]["seconds"] = {"clean": 2.0, "pgd20": 40.0, "aa": 300.0}
            for e in res["epochs"]:
                e["probe_seconds"] = 5.0
            p.write_text(json.dumps(res))
    table5 = report(table_runs(), tmp_path / "r", "markdown", table="table5")
    assert ("the final evaluation took a median of 342 s per run (clean 2 s, PGD-20 with the feature gap 40 s, "
            "AutoAttack 300 s)") in table5
    assert "not in the times above" not in report(table_runs(), RESULTS, "markdown", table="table5").lower()
    text = claims(table_runs() + fig4_runs(), tmp_path / "r")
    line = next(s for s in text.splitlines() if s.startswith("Compute:"))
    assert "final evaluation" in line and "AutoAttack" in line and "per-epoch probes" in line and "other" in line
    assert "the rest is evaluation" in claims(table_runs() + fig4_runs(), RESULTS)


def test_compute_line_counts_the_measured_parts_of_runs_that_kept_only_their_last_process_wall_time(tmp_path):
    """Results written before wall time was carried across processes ("wall_processes" absent) hold only the
    last process's wall time; where that is less than the run's measured parts the parts are counted, and said."""
    import json

    from bench.report.claims import claims

    shutil.copytree(RESULTS, tmp_path / "r")
    done = []
    for p in sorted((tmp_path / "r" / "runs").glob("*.json")):
        try:
            res = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if res.get("status") == "done":
            res["metrics"]["seconds"] = {"clean": 1.0, "pgd20": 10.0, "aa": 100.0}
            res["train_seconds"], res["wall_seconds"], res["wall_processes"] = 50.0, 200.0, 1
            for e in res["epochs"]:
                e.pop("probe_seconds", None)
            done.append((p, res))
    for p, res in done:
        p.write_text(json.dumps(res))

    def line() -> str:
        text = claims(table_runs() + fig4_runs(), tmp_path / "r")
        return next(s for s in text.splitlines() if s.startswith("Compute:"))

    assert "resumed in another process" not in line() and "other -" not in line()
    for p, res in done:  # legacy results that resumed: their last process ran 20 s of their 161 s of parts
        res["wall_seconds"] = 20.0
        del res["wall_processes"]
        p.write_text(json.dumps(res))
    assert re.search(r"\(\d+ runs resumed in another process", line()) and "other 0.00 h" in line()


def test_a_methods_grid_recipe_counts_as_the_method_and_a_sweeps_variants_do_not():
    """at_defaults: RiFT's runs in the cpu grid all set select_rule (the grid's recipe): they are RiFT. AFD's runs
    at its defaults are AFD; its sweep's variants are not."""
    import pandas as pd

    from bench.report.plots import at_defaults

    df = pd.DataFrame([{"method": "rift", "hp.select_rule": "paired_se"}, {"method": "rift", "hp.select_rule": "paired_se"},
                       {"method": "afd", "hp.gamma": 25.0}, {"method": "afd", "hp.gamma": 25.0},
                       {"method": "afd", "hp.gamma": 2.0}])
    assert at_defaults(df).tolist() == [True, True, True, True, False]
    # RiFT with two different selection rules: neither is its default recipe ('fixed'), so neither is RiFT
    df.loc[1, "hp.select_rule"] = "fixed"
    assert at_defaults(df).tolist() == [False, True, True, True, False]


def _write_evals(root: Path) -> Path:
    """A results folder with the fixture's results of `bench eval`, a file killed mid-write and a resumable
    evaluation's state folder (not a result)."""
    shutil.copytree(RESULTS / "evals", root / "evals")
    (root / "evals" / "cccccccccccc.json").write_text('{"eval_id": "cccccccccccc", "sta')
    (root / "evals" / "cccccccccccc.chunks").mkdir()
    return root


def test_report_evals_renders_every_result_of_bench_eval_in_every_format(tmp_path, capsys):
    """`bench report --evals`: one row per finished evaluation (in the order they finished) with the checkpoint's
    file name, the accuracies and their image counts, the order check, the keys mapped, when and where; an
    unreadable file is a note."""
    import io

    import pandas as pd

    from bench.cli import main

    results = _write_evals(tmp_path / "r")
    assert main(["report", "--evals", "--results", str(results)]) == 0
    md = capsys.readouterr().out
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| Eval | Model | Checkpoint | Data set | Clean | PGD-20 | AA | Order | Keys | Finished | "
                       "Device |")
    assert rows[1] == ("| bbbbbbbbbbbb | zoo:Carmon2019Unlabeled | — | cifar10 | 81.25 (1000) | 43.75 (1000) | — | "
                       "violated | none | 2026-12-02 04:09 UTC | NVIDIA H100 80GB HBM3 |")
    assert rows[2] == ("| aaaaaaaaaaaa | small\\_cnn | model\\_final.pt | cifar10 | 81.25 (1000) | 43.75 (1000) | "
                       "31.00 (200) | ok | 1 | 2026-12-03 10:00 UTC | NVIDIA H100 80GB HBM3 |")
    assert "someone" not in md  # the file's name, not the path of the machine it ran on
    assert "- evals/cccccccccccc.json: unreadable (JSONDecodeError), not in the table" in md
    assert "  - aaaaaaaaaaaa: stripped the prefix 'module.'" in md
    assert "  - bbbbbbbbbbbb: AA above PGD-20 on 3 images" in md
    assert "with the number of test images each was measured on in parentheses" in md
    assert main(["report", "--evals", "--results", str(results), "--format", "csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out), comment="#")
    assert list(csv.eval_id) == ["bbbbbbbbbbbb", "aaaaaaaaaaaa"]
    assert csv.loc[1, ["clean", "n_clean", "aa", "n_aa"]].tolist() == [81.25, 1000, 31.0, 200]
    assert math.isnan(csv.loc[0, "aa"]) and csv.loc[0, "n_aa"] == 0
    assert csv.loc[1, "key_mapping"] == "stripped the prefix 'module.'" and csv.loc[1, "sanity"] == "ok"
    out = tmp_path / "evals.tex"
    assert main(["report", "--evals", "--results", str(results), "--format", "latex", "--out", str(out)]) == 0
    tex = out.read_text()
    assert tex.startswith("\\begin{table}") and "\\begin{tabular}{llllccclll" in tex and "\\caption{" in tex
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule")[0]
    assert [line.count(" & ") for line in body.splitlines()] == [10, 10]
    assert "model\\_final.pt" in tex and "31.00 (200)" in tex
    if shutil.which("pdflatex") is not None:
        (tmp_path / "evals_doc.tex").write_text(_latex_document(tex))
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "evals_doc.tex"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]


def test_report_evals_on_an_empty_folder_and_with_grid_options(tmp_path, capsys):
    from bench.cli import main

    assert main(["report", "--evals", "--results", str(tmp_path)]) == 0
    assert "- —: no finished result of bench eval under evals/." in capsys.readouterr().out
    for extra, named in ((["--compare", "paper"], "--compare"), (["--seeds", "3"], "--seeds"),
                         (["--claims"], "--claims"), (["--table", "table1"], "--table")):
        assert main(["report", "--evals", "--results", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert err == f"bench: error: --evals renders every result of bench eval: leave out {named}\n"
    assert main(["report", "--evals", "--grid", "demo"]) == 2  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "one of the arguments --grid --evals is required" in capsys.readouterr().err


# -- a grid's own methods in the paper's tables ----------------------------------------------------------------
@pytest.fixture
def vaft_clean(monkeypatch):
    """The example plugin (examples/my_method) registered for one test, and taken out of the registry after it."""
    import importlib

    from conftest import REPO
    from methods import REGISTRY

    monkeypatch.syspath_prepend(str(REPO / "examples" / "my_method" / "src"))
    importlib.import_module("my_method.vaft_clean")
    yield "vaft_clean"
    REGISTRY.pop("vaft_clean", None)
    for mod in ("my_method.vaft_clean", "my_method"):
        sys.modules.pop(mod, None)


def _with_plugin_results(tmp_path, method: str, clean=80.0, pgd=45.0, aa=40.0, seeds=(0,)) -> tuple[list, Path]:
    """The fixture results plus runs of ``method`` fine-tuned from the fixtures' natural parent (RN18, CIFAR-10)."""
    import dataclasses
    import json

    from bench.core.config import to_dict

    results = tmp_path / "r"
    shutil.copytree(RESULTS, results)
    runs = []
    for seed in seeds:
        c = dataclasses.replace(cfg("vaft", seed=seed), method=method, hparams=(("clean_weight", 0.5),))
        runs.append(c)
        m = {"clean": (clean + seed) / 100, "pgd20": (pgd + seed) / 100, "aa": (aa + seed) / 100, "violations": []}
        (results / "runs" / f"{run_id(c)}.json").write_text(json.dumps(
            {"run_id": run_id(c), "status": "done", "config": to_dict(c), "metrics": m, "epochs": [],
             "train_seconds": 1.0, "seconds_per_epoch": 1.0, "device_name": "Fixture GPU X1"}))
    return runs, results


def test_a_grids_own_method_gets_a_row_after_the_declared_ones(vaft_clean, tmp_path):
    runs, results = _with_plugin_results(tmp_path, vaft_clean)
    md = report(table_runs() + runs, results, "markdown", table="table1")
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert rows[-2:] == ["AFD", "vAFT+clean"]  # after the declared rows, labelled by its declaration
    mine = next(line for line in md.splitlines() if line.startswith("| vAFT+clean "))
    assert [c.strip() for c in mine.split("|")[2:6]] == ["80.00", "45.00", "40.00", "55.00"]  # below every mark
    # the paper's own methods keep to their tables: Table 3's ablations and the natural parent are no rows here
    assert "vAFT+D" not in md and "Standard" not in md
    table = md.split("\n\n")[0].splitlines()
    assert table[:-1] == report(table_runs(), results, "markdown", table="table1").split("\n\n")[0].splitlines()
    tex = report(table_runs() + runs, results, "latex", table="table1")
    assert tex.index("AFD &") < tex.index("\\midrule\nvAFT+clean")
    paper = report(table_runs() + runs, results, "markdown", table="table1", compare="paper")
    assert "- no paper number: not in the paper: vAFT+clean." in paper
    assert "not in the paper" not in report(table_runs(), results, "markdown", table="table1", compare="paper")


def test_compare_paper_works_for_a_grid_file(vaft_clean, tmp_path):
    from bench.cli import main

    runs, results = _with_plugin_results(tmp_path, vaft_clean)
    grid = tmp_path / "mine.toml"
    grid.write_text('methods = ["vaft", "afd", "vaft_clean"]\nmodels = ["resnet18"]\ndatasets = ["cifar10"]\n'
                    'epochs = 20\n[hparams.afd]\nalpha = 0.05\n')
    md = report(str(grid), results, "markdown", compare="paper")
    lines = md.splitlines()
    vaft = lines.index(next(x for x in lines if x.startswith("| vAFT | ours")))
    assert lines[vaft + 1] == "|  | paper | 83.93 | 51.40 | 45.48 | 60.27 |"  # Table 1's vAFT, RN18 CIFAR-10
    assert "- no paper number: not in the paper: vAFT+clean." in md
    # a grid on a network the paper's accuracy tables do not use: one line, exit 2
    small = tmp_path / "small.toml"
    small.write_text('methods = ["vaft"]\nmodels = ["small_cnn"]\ndatasets = ["digits"]\n')
    assert main(["report", "--grid", str(small), "--results", str(results), "--compare", "paper"]) == 2
    assert main(["report", "--grid", str(grid), "--results", str(results)]) == 0  # without --compare as before


def test_claims_take_the_expanded_runs_seeds_and_set_included(capsys, tmp_path):
    import json

    from bench.cli import apply_sets, main
    from bench.core.config import to_dict
    from bench.grid.grids import get_grid

    assert main(["report", "--grid", "table1", "--results", str(RESULTS), "--claims", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "generated by `python -m bench report --grid table1 --claims`" in out
    # RN18 CIFAR-10: ten methods with three seeds each and their one natural parent (before: 11, the grid's seed 0)
    assert "Runs: 0 of 31 finished" in out
    # one finished run of the grid as --set makes it: counted with the --set, not without
    vaft = next(c for c in apply_sets(get_grid("table1"), ["eval.n_aa=0"]) if c.method == "vaft"
                and c.dataset == "cifar10")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{run_id(vaft)}.json").write_text(json.dumps(
        {"run_id": run_id(vaft), "status": "done", "config": to_dict(vaft), "epochs": [], "train_seconds": 1.0,
         "metrics": {"clean": 0.8, "pgd20": 0.5, "aa": 0.0, "violations": []}, "device_name": "X"}))
    for sets, done in (([], 0), (["--set", "eval.n_aa=0"], 1)):
        assert main(["report", "--grid", "table1", "--results", str(tmp_path), "--claims", *sets]) == 0
        assert f"Runs: {done} of 11 finished" in capsys.readouterr().out


def test_claims_count_a_plugin_that_fine_tunes_a_natural_parent_among_the_fine_tuning_methods(vaft_clean, tmp_path):
    from bench.report.claims import claims, finetune_methods

    runs, results = _with_plugin_results(tmp_path, vaft_clean, clean=84.0, pgd=56.0, aa=49.0, seeds=(0, 1))
    text = claims(table_runs() + runs, results, name="mine.toml")
    assert "generated by `python -m bench report --grid mine.toml --claims`" in text
    claim1 = text.split("### 1.")[1].split("### 2.")[0]
    assert "| vAFT+clean | 2 | 84.50 ± 0.71 | 56.50 ± 0.71 | 49.50 ± 0.71 | — / — / — |" in claim1
    assert "- PGD-20: AFD 52.76 vs the best other, vAFT+clean 56.50: difference -3.74" in claim1
    assert "vAFT+D" not in claim1  # a built-in ablation is not one of the fine-tuning methods of claim 1
    claim2 = text.split("### 2.")[1].split("### 3.")[0]
    assert "| vAFT+clean | no per-epoch gap recorded | — |" in claim2
    assert finetune_methods(["vaft_d", "afd", vaft_clean]) == (
        "vaft", "rift", "afkd", "arrest", "afd", vaft_clean)
    # without it the claims are those of the fixture's runs alone
    assert "vAFT+clean" not in claims(table_runs(), results)


def test_a_grids_own_method_gets_a_column_of_table3_whose_columns_are_the_methods(vaft_clean, tmp_path):
    runs, results = _with_plugin_results(tmp_path, vaft_clean)
    md = report(table_runs() + runs, results, "markdown", table="table3", compare="paper")
    assert md.splitlines()[0].rstrip("|").split("|")[-1].strip() == "vAFT+clean"
    assert "| Clean | ours | 84.12 ± 0.18 (n=2) | 84.60 | 84.60 | 85.03 ± 0.18 (n=2) | 80.00 |" in md
    assert "- no paper number: not in the paper: vAFT+clean." in md
    # Table 4's rows and columns are not methods: nothing is added
    assert report(table_runs() + runs, results, "markdown", table="table4") == \
        report(table_runs(), results, "markdown", table="table4")


def test_table1_names_the_network_each_row_ran_on(tmp_path):
    """Table 1's rows ran on two networks of one name (the AFD code's rows on its unpadded ResNet18): the table
    selects both and says which row ran on which; a table of one network per architecture says nothing."""
    md = report("table1", tmp_path, "markdown")
    note = next(line for line in md.splitlines() if line.startswith("- Networks:"))
    assert "vAFT, AFKD, ARREST, AFD on resnet18\\_afd (the AFD code's ResNet18, first convolution unpadded)" in note
    assert "PGD-AT, TRADES, Free-AT, FGSM-GA, ATAS, RiFT on resnet18 (the TRADES code's CIFAR ResNet18)" in note
    assert "vAFT RN18 (AFD code)/CIFAR-10 seed 0" in md  # the missing runs it selected, AFD code's network included
    assert "- Networks:" not in report("table2", tmp_path, "markdown")


def test_the_noise_of_a_metric_measured_on_no_images_is_the_seed_spread_alone():
    """AutoAttack left out (n_aa 0): no test-sample error to speak of, and no division by zero."""
    import pandas as pd

    from bench.report.noise import binomial_noise, noise

    assert math.isnan(binomial_noise(50.0, 40.0, 0))
    assert noise(pd.Series([50.0, 52.0]), pd.Series([40.0, 40.0]), 0) == pytest.approx(1.0)
    assert noise(pd.Series([50.0, 52.0]), pd.Series([40.0, 40.0]), 100) == pytest.approx(binomial_noise(51, 40, 100))
