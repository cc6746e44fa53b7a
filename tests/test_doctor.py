"""`bench doctor`: the machine in a few lines, and with --check the suite's promises on it (CI runs the checks on
the CPU; on a GPU the same command checks the GPU)."""
from __future__ import annotations

import pytest

from bench.cli import main


def test_doctor_names_versions_devices_policy_and_data(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for what in ("torch ", "CUDA", "cpu: ", "native: fp32", "determinism: strict", "data root:", "digits"):
        assert what in out, what


@pytest.mark.slow  # about a minute on 2 CPU cores
def test_doctor_checks_pass_on_this_machine(capsys):
    code = main(["doctor", "--check", "--device", "auto"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [s for s in out.splitlines() if s.startswith(("ok ", "FAIL "))]
    assert len(lines) == 6 and all(s.startswith("ok ") for s in lines), out
    assert "all checks passed" in out


def test_a_failing_check_is_one_line_and_exits_1(monkeypatch, capsys):
    from bench.perf import doctor

    def broken(device, policy, work):
        raise doctor.CheckFailed("a run resumed after epoch 1 differs")

    for name in ("check_method_steps", "check_evaluations_equal", "check_cpu_vs_gpu", "check_sync_export",
                 "check_speed"):
        monkeypatch.setattr(doctor, name, lambda *a, **k: "stubbed for this test")
    monkeypatch.setattr(doctor, "check_resume", broken)
    assert main(["doctor", "--check", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  resume: a run resumed after epoch 1 differs" in out and "1 check(s) failed" in out
