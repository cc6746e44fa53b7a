"""RobustBench zoo parents, offline: a zoo-format checkpoint written by the test (robustbench's layout
<model_dir>/<dataset>/<threat>/<name>.pt holding a state_dict) loads through robustbench.utils.load_model."""
from __future__ import annotations

import pytest
import torch

from bench.models.zoo import ZooError, load_zoo_model, parse_name
from bench.core.runtime import Runtime


def test_parse_name():
    assert parse_name("zoo:Standard") == ("Standard", "Linf")
    assert parse_name("zoo:Foo@L2") == ("Foo", "L2")
    with pytest.raises(ZooError, match="unknown threat"):
        parse_name("zoo:Foo@L3")


def test_unsupported_dataset_is_one_line():
    with pytest.raises(ZooError, match="zoo parents exist for cifar10, cifar100"):
        load_zoo_model("zoo:Standard", "digits", Runtime())


def test_missing_extra_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("robustbench"):
            raise ModuleNotFoundError("No module named 'robustbench'", name="robustbench")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ZooError, match=r"pip install -e '\.\[zoo\]'"):
        load_zoo_model("zoo:Standard", "cifar10", Runtime())


@pytest.mark.slow
def test_zoo_checkpoint_loads_offline_and_exposes_features(tmp_path, monkeypatch):
    try:
        from bench.models.zoo import import_robustbench_load_model

        import_robustbench_load_model()
    except ZooError as e:
        pytest.skip(f"optional extra not installed: {e}")
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from bench.models.architectures import feature_extractor_and_head

    name = "Wong2020Fast"  # a PreActResNet18 (11M parameters): the smallest CIFAR-10 Linf zoo model
    torch.manual_seed(0)
    net = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()
    path = tmp_path / "zoo" / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True)
    # the layout of the zoo's files: a dict with a DataParallel-prefixed state_dict
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    monkeypatch.setenv("BENCH_ZOO_DIR", str(tmp_path / "zoo"))
    model = load_zoo_model(f"zoo:{name}", "cifar10", Runtime())
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
        feats, head = feature_extractor_and_head(model)
        assert torch.allclose(head(feats(x)), model(x), atol=1e-5)
    assert head.out_features == 10


def test_zoo_model_absent_offline_is_one_line(tmp_path, monkeypatch):
    try:
        from bench.models.zoo import import_robustbench_load_model

        import_robustbench_load_model()
    except ZooError as e:
        pytest.skip(f"optional extra not installed: {e}")
    monkeypatch.setenv("BENCH_ZOO_DIR", str(tmp_path / "zoo"))
    with pytest.raises(ZooError, match="no cifar10/Linf model named 'NoSuchModel'"):
        load_zoo_model("zoo:NoSuchModel", "cifar10", Runtime())
