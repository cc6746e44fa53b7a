"""Every built-in method is pinned to its reference: some differential test here builds it and compares it with a
transcription of its public code. A method added to the registry without one fails this test."""
from __future__ import annotations

import re
from pathlib import Path

from methods import REGISTRY

HERE = Path(__file__).resolve().parent


def test_every_registered_method_has_a_differential_test():
    built = set()
    for path in HERE.glob("test_ref_*.py"):
        built |= set(re.findall(r"""build\(\s*["']([a-z0-9_]+)["']""", path.read_text()))
        built |= set(re.findall(r"""METHOD\s*=\s*["']([a-z0-9_]+)["']""", path.read_text()))
        built |= set(re.findall(r"""\brun\(\s*["']([a-z0-9_]+)["']""", path.read_text()))  # test_ref_afd's runner
    builtin = {name for name, cls in REGISTRY.items() if cls.__module__.startswith("methods.")}
    assert builtin - built == set(), f"methods without a differential test in tests/reference: {sorted(builtin - built)}"
