"""``fedsilo example NAME prepare`` and ``fedsilo data split`` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fedsilo.cli import _data, _examples
from fedsilo.config import Classification, open_workspace
from fedsilo.datasets import Scheme, prepare_example
from fedsilo.errors import ConfigError
from fedsilo.provisioning import provision
from fedsilo.storage import open_catalog
from tests.datasets.real_data import real_data

FEDERATION = """\
name: prep
orchestrator:
  storage: {root: storage/orchestrator}
  compute: {name: orchestrator-cpu}
silos:
  - name: silo-a
    storage: {root: storage/silo-a}
    compute: {name: silo-a-cpu}
  - name: silo-b
    storage: {root: storage/silo-b}
    compute: {name: silo-b-cpu}
"""


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    _data.register(root)
    _examples.register(root)
    return root


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    spec = tmp_path / "federation.yaml"
    spec.write_text(FEDERATION)
    provision(spec, tmp_path / "ws")
    return tmp_path / "ws"


def _run(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_prepare_registers_each_silos_share_as_sensitive(app: typer.Typer, workspace: Path) -> None:
    out = json.loads(_run(app, "example", "helloworld", "prepare", str(workspace), "--json"))
    ws = open_workspace(workspace)
    total = 0
    for silo in ("silo-a", "silo-b"):
        with open_catalog(ws.kit(silo)) as catalog:
            records = {r.name: r for r in catalog.list()}
            assert set(records) == {"helloworld-train", "helloworld-test"}
            assert {r.classification for r in records.values()} == {Classification.SENSITIVE}
            with np.load(catalog.path_of("helloworld-train"), allow_pickle=False) as data:
                rows = len(data["y"])
        assert rows == out["split"]["silos"][silo]["train"]["rows"]
        total += rows + out["split"]["silos"][silo]["test"]["rows"]
    assert total == 1797  # every digit, each in exactly one silo


def test_prepare_again_needs_replace_and_honours_options(workspace: Path) -> None:
    prepare_example(workspace, "helloworld")
    with pytest.raises(ConfigError, match="already"):
        prepare_example(workspace, "helloworld")
    again = prepare_example(
        workspace,
        "helloworld",
        replace_existing=True,
        scheme=Scheme.DIRICHLET,
        alpha=0.1,
        seed=4,
        silos=["silo-b"],
    )
    assert list(again.records) == ["silo-b"]
    assert again.manifest["scheme"] == "dirichlet" and again.manifest["alpha"] == 0.1


def test_prepare_refuses_unknown_examples_and_silos(app: typer.Typer, workspace: Path) -> None:
    with pytest.raises(ConfigError, match=r"the examples are: .*helloworld"):
        prepare_example(workspace, "nope")
    with pytest.raises(ConfigError, match="no silo 'silo-z'"):
        prepare_example(workspace, "helloworld", silos=["silo-z"])
    result = CliRunner().invoke(
        app, ["example", "helloworld", "prepare", str(workspace), "--scheme", "x"]
    )
    assert isinstance(result.exception, ConfigError) and "unknown scheme 'x'" in str(
        result.exception
    )


def test_data_split_writes_shards_of_a_npz_file(app: typer.Typer, tmp_path: Path) -> None:
    source = tmp_path / "rows.npz"
    np.savez(source, x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    manifest = json.loads(
        _run(
            app,
            "data",
            "split",
            str(source),
            "--silos",
            "4",
            "--scheme",
            "dirichlet",
            "--alpha",
            "1.0",
            "--seed",
            "3",
            "--test-fraction",
            "0.25",
            "-o",
            str(tmp_path / "out"),
            "--json",
        )
    )
    assert manifest["scheme"] == "dirichlet" and set(manifest["silos"]) == {
        "silo-1",
        "silo-2",
        "silo-3",
        "silo-4",
    }
    seen = []
    for silo in manifest["silos"]:
        for role in ("train", "test"):
            with np.load(tmp_path / "out" / silo / f"{role}.npz", allow_pickle=False) as data:
                seen.extend(data["x"][:, 0].tolist())
    assert sorted(seen) == np.arange(0.0, 40.0, 2.0).tolist()


def test_data_split_of_a_missing_dataset_says_where_to_get_it(
    app: typer.Typer, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, ["data", "split", "pneumoniamnist", "--data", str(tmp_path), "-o", str(tmp_path / "o")]
    )
    assert isinstance(result.exception, ConfigError)
    assert "pneumoniamnist.npz is missing" in str(result.exception)
    assert "medmnist.com" in str(result.exception)


def test_data_split_of_real_fashion_mnist_by_dirichlet(app: typer.Typer, tmp_path: Path) -> None:
    root = real_data("fashion-mnist")
    manifest = json.loads(
        _run(
            app,
            "data",
            "split",
            "fashion-mnist",
            "--data",
            str(root),
            "--silos",
            "5",
            "--scheme",
            "dirichlet",
            "--alpha",
            "0.5",
            "-o",
            str(tmp_path / "f"),
            "--json",
        )
    )
    train = [manifest["silos"][s]["train"]["rows"] for s in manifest["silos"]]
    test = [manifest["silos"][s]["test"]["rows"] for s in manifest["silos"]]
    assert sum(train) == 60000 and sum(test) == 10000
    assert max(test) - min(test) <= 1
