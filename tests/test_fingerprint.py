"""A result's code fingerprint: what the code does counts, its comments, docstrings and layout do not; the method's
own module (a plugin's too) and the training and evaluation code are in it; a change names the modules."""
from __future__ import annotations

import importlib
import sys

from bench.core import fingerprint as fp


def test_comments_docstrings_and_layout_do_not_count_but_code_does():
    base = fp.source_digest('"""Module doc."""\ndef f(x, k=2):\n    """Doc."""\n    return x * k  # why\n')
    assert fp.source_digest('"""Other doc."""\n\n\ndef f(x,\n      k=2):\n    # a new comment\n    return (x * k)\n') \
        == base
    assert fp.source_digest('def f(x, k=3):\n    return x * k\n') != base
    assert fp.source_digest('def f(x, k=2):\n    return k * x\n') != base


def test_the_fingerprint_holds_the_method_the_loop_and_the_evaluator():
    from methods import get_method

    got = fp.code_fingerprint(get_method("afd"))
    mods = got["modules"]
    assert {"methods.afd", "methods.base", "bench.train.loop", "bench.eval.evaluator", "bench.eval.attacks",
            "bench.data", "bench.models.architectures", "bench.core.config"} <= set(mods)
    assert not any(m.startswith(("bench.report", "bench.grid", "bench.cli", "bench.perf")) for m in mods)
    assert len(got["digest"]) == 12 and fp.code_fingerprint(get_method("afd")) == got
    assert fp.code_fingerprint(get_method("vaft"))["digest"] != got["digest"]


def test_an_edited_plugin_changes_the_fingerprint_and_names_its_module(tmp_path, monkeypatch):
    from methods import Method

    pkg = tmp_path / "plug"
    pkg.mkdir()
    src = ("from methods import Method\n\nclass Mine(Method):\n    name = 'mine_fp'\n\n"
           "    def loss(self, batch, step):\n        return {'loss': self.model(batch.x).sum()}\n")
    (pkg / "mine_fp.py").write_text(src)
    monkeypatch.syspath_prepend(str(pkg))
    cls = importlib.import_module("mine_fp").Mine
    assert issubclass(cls, Method)
    before = fp.code_fingerprint(cls)
    assert "mine_fp" in before["modules"]
    (pkg / "mine_fp.py").write_text(src.replace(".sum()", ".mean()"))
    monkeypatch.setattr(fp, "_DIGESTS", {})  # a new process reads the edited file
    after = fp.code_fingerprint(cls)
    assert fp.changed_modules(before, after) == ["mine_fp"]
    assert fp.changed_modules(before, before) == []
    assert fp.changed_modules(None, after) is None  # a result from before fingerprints: not known to be stale
    sys.modules.pop("mine_fp", None)


def test_changes_are_described_in_one_short_line():
    assert fp.describe_changes(["a", "b"]) == "a, b"
    assert fp.describe_changes([f"m{i}" for i in range(7)]) == "m0, m1, m2, m3 and 3 more"
