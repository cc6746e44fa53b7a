"""Every command shown in README.md and docs/*.md runs, and prints what the page says it prints.

The conventions (docs/contributing.md, "The docs test"):

- a fenced block whose info string is ``bash`` is runnable: each command runs with bash from the repository root,
  ``.venv/bin/python`` replaced by this interpreter, and must exit 0;
- a block marked ``bash expensive`` (training, installing, SLURM submission, ``bench speed``, the test suite, or
  what needs their results) is skipped with that reason;
- ``--results DIR`` becomes a temporary copy of DIR (empty when DIR does not exist), a bench command that takes
  ``--results`` and names none gets an empty temporary folder, ``--out PATH`` a temporary path;
- a ``text`` block directly after a runnable block is its expected standard output, compared exactly (trailing
  newlines aside), the temporary paths written back as the page wrote them.

Also: every docs page is linked from the README, and every relative link of these pages leads to an existing file
(and heading, where it names one).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON = ".venv/bin/python"
# bench subcommands that read or write a results folder (the test gives them a temporary one)
TAKES_RESULTS = ("run", "plan", "status", "report", "plot", "eval")
# what a copied results folder leaves behind: never committed, possibly large
NOT_COPIED = shutil.ignore_patterns("ckpt", "locks", "jobs", "slurm", "tensorboard", "*.chunks", "*.tmp")
TIMEOUT = 120  # seconds per command; they take a few
# With pipefail on, `cmd | head -4` would fail whenever head exits before cmd has written everything (cmd then dies
# of a broken pipe): this head prints the same lines and reads its input to the end.
PRELUDE = 'head() { command head "$@"; cat >/dev/null; }\n'


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    expected: str | None = None  # the text block right after it, if any

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def expensive(self) -> bool:
        return "expensive" in self.info.split()[1:]


FENCE = re.compile(r"^(`{3,})(.*)$")


def fenced_blocks(page: Path) -> list[tuple[int, str, str, int]]:
    """(opening line, info string, content, closing line) of every fenced block of a Markdown page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i
        j = i + 1
        while j < len(lines) and not (lines[j].startswith(fence) and lines[j].strip() == fence):
            j += 1
        out.append((start + 1, info, "\n".join(lines[start + 1:j]), j + 1))
        i = j + 1
    return out


def bash_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    raw = fenced_blocks(page)
    blocks = []
    for k, (line, info, text, end) in enumerate(raw):
        if info.split()[:1] != ["bash"]:
            continue
        block = Block(page, line, info, text)
        if k + 1 < len(raw):
            nline, ninfo, ntext, _ = raw[k + 1]
            between = lines[end:nline - 1]
            if ninfo.split()[:1] == ["text"] and all(not s.strip() for s in between):
                block.expected = ntext
        blocks.append(block)
    return blocks


def commands(text: str) -> list[str]:
    """The commands of a shell block: backslash continuations joined, blank lines and comment lines skipped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


ALL = [b for page in PAGES for b in bash_blocks(page)]
RUNNABLE = [b for b in ALL if not b.expensive]


def rewrite(cmd: str, tmp: Path, n: int) -> tuple[str, dict[str, str]]:
    """The command as the test runs it, and {temporary path: the page's path} to write back in its output."""
    back: dict[str, str] = {}
    work = tmp / f"w{n}"

    def results(m: re.Match) -> str:
        given = m.group(2)
        dst = work / "results" / Path(given).name
        src = REPO / given
        if src.is_dir():
            shutil.copytree(src, dst, ignore=NOT_COPIED)
        else:  # an empty folder, as a fresh `bench run` leaves (commands that read results refuse a missing one)
            dst.mkdir(parents=True, exist_ok=True)
        back[str(dst)] = given
        return f"{m.group(1)}{shlex.quote(str(dst))}"

    def out(m: re.Match) -> str:
        given = m.group(2)
        dst = work / "out" / given.strip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        back[str(dst)] = given
        return f"{m.group(1)}{shlex.quote(str(dst))}"

    cmd = re.sub(r"(--results(?:\s+|=))(\S+)", results, cmd)
    cmd = re.sub(r"(--out(?:\s+|=))(\S+)", out, cmd)
    empty = work / "empty-results"
    empty.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"({re.escape(PYTHON)}\s+-m\s+bench\s+({'|'.join(TAKES_RESULTS)}))(?=\s|$)")
    if "--results" not in cmd:
        cmd = pattern.sub(lambda m: f"{m.group(1)} --results {shlex.quote(str(empty))}", cmd)
    cmd = cmd.replace(PYTHON, shlex.quote(sys.executable))
    return cmd, back


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("BENCH_PLUGINS", "BENCH_DATA_ROOT", "BENCH_SLURM_PROFILE", "BENCH_SLURM_PROFILES")}
    env["PYTHONPATH"] = str(REPO)
    env["BENCH_CACHE_DIR"] = str(tmp / "cache")
    return env


def test_the_pages_have_runnable_and_expensive_blocks():
    assert len(RUNNABLE) >= 10 and len(ALL) > len(RUNNABLE)
    for b in ALL:
        extra = set(b.info.split()[1:]) - {"expensive"}
        assert not extra, f"{b.id}: unknown marker(s) {sorted(extra)} (```bash or ```bash expensive)"
        assert commands(b.text), f"{b.id}: an empty shell block"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_documented_commands_run(block: Block, tmp_path: Path):
    stdout = []
    for n, cmd in enumerate(commands(block.text)):
        assert PYTHON in cmd, f"{block.id}: a runnable command should run {PYTHON}: {cmd}"
        run_cmd, back = rewrite(cmd, tmp_path, n)
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", PRELUDE + run_cmd], cwd=REPO, env=_env(tmp_path),
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert proc.returncode == 0, (f"{block.id}: `{cmd}` exited {proc.returncode}\n"
                                      f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
        out = proc.stdout
        for path, given in sorted(back.items(), key=lambda kv: -len(kv[0])):
            out = out.replace(path, given)
        stdout.append(out)
    if block.expected is not None:
        got = "".join(stdout).rstrip("\n")
        assert got == block.expected.rstrip("\n"), (f"{block.id}: the output differs from the page's text block\n"
                                                    f"--- page\n{block.expected}\n--- now\n{got}")


@pytest.mark.parametrize("block", [b for b in ALL if b.expensive], ids=[b.id for b in ALL if b.expensive])
def test_expensive_commands_are_skipped(block: Block):
    pytest.skip(f"{block.id}: marked expensive ({commands(block.text)[0][:70]})")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES + [REPO / "results/cpu/README.md", REPO / "results/cpu/REPRODUCTION.md",
                         REPO / "results/cpu20/README.md", REPO / "results/cpu20/REPRODUCTION.md",
                         REPO / "results/cpu-before-as-run/README.md", REPO / "examples/my_method/README.md"]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            if target.startswith("#"):
                target = page.name + target
            path, _, anchor = target.partition("#")
            dest = page.parent / path
            assert dest.exists(), f"{page.relative_to(REPO)}: broken link {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{page.relative_to(REPO)}: no heading for {target}"


def test_license_and_citation_agree_with_pyproject():
    """The LICENSE file is the licence pyproject declares, and CITATION.cff cites this version of the package."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    cff = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M)
    assert re.search(rf"^version: {re.escape(project['version'])}$", cff, re.M)
    assert re.search(r"^license: MIT$", cff, re.M)
    assert "arXiv:2401.14707" in cff  # the AFD paper, the preferred citation
