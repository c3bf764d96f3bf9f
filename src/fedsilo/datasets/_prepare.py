"""The data of each example under ``examples/``, and ``fedsilo example NAME prepare``.

An :class:`ExampleData` says which public dataset an example reads, how its rows are
dealt to the silos by default, and which catalog name each part gets. :func:`prepare_example`
loads the original files, splits them across a workspace's silos and registers each
silo's shards in that silo's own catalog as ``sensitive`` data, the way an organisation
would connect its own records. A new example plugs in with one entry in :data:`EXAMPLES`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo._suggest import did_you_mean, listing
from fedsilo.config import Classification, open_workspace
from fedsilo.datasets._loaders import load_fashion_mnist, load_pneumoniamnist
from fedsilo.datasets._records import Arrays, Shardable
from fedsilo.datasets._sequences import load_creditcard_by_time
from fedsilo.datasets._split import MANIFEST, Scheme, SplitPlan, split, write_shards
from fedsilo.datasets._tagged import load_wnut16_folders
from fedsilo.errors import ConfigError
from fedsilo.storage import DatasetRecord, add_dataset

__all__ = [
    "EXAMPLES",
    "ExampleData",
    "PreparedExample",
    "example_data",
    "load_digits",
    "prepare_example",
]

Loader = Callable[[Path | str | None], Mapping[str, Shardable]]


def load_digits(root: Path | str | None = None) -> dict[str, Arrays]:
    """scikit-learn's 1,797 handwritten 8 x 8 digits, shipped with it (``root`` unused).

    One part, ``all``: ``x`` (float32, N x 64, scaled to [0, 1]) and ``y`` (int64, 0-9).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    return {"all": Arrays({"x": (x / 16.0).astype(np.float32), "y": y.astype(np.int64)}, "y")}


def _parts(loader: Loader, keep: Sequence[str]) -> Loader:
    def load(root: Path | str | None) -> Mapping[str, Shardable]:
        parts = loader(root)
        return {role: parts[role] for role in keep}

    return load


@dataclass(frozen=True)
class ExampleData:
    """The data of one example: where it comes from and how it reaches the silos.

    ``datasets`` maps each part (``train``, ``test``) to its name in a silo's catalog,
    which the example's job files use as their ``inputs``.
    """

    name: str
    summary: str
    source: str
    load: Loader
    datasets: Mapping[str, str]
    plan: SplitPlan = field(default_factory=SplitPlan)
    needs_data_root: bool = True


EXAMPLES: dict[str, ExampleData] = {
    example.name: example
    for example in (
        ExampleData(
            name="helloworld",
            summary="scikit-learn's digits, dealt IID; tests a federation without learning",
            source="scikit-learn load_digits",
            load=load_digits,
            datasets={"train": "helloworld-train", "test": "helloworld-test"},
            plan=SplitPlan(test_fraction=0.2),
            needs_data_root=False,
        ),
        ExampleData(
            name="fashion-mnist",
            summary="Fashion-MNIST (60,000 + 10,000 images), IID or Dirichlet label skew",
            source="fashion-mnist",
            load=load_fashion_mnist,
            datasets={"train": "fashion-mnist-train", "test": "fashion-mnist-test"},
        ),
        ExampleData(
            name="pneumonia",
            summary="PneumoniaMNIST chest X-rays (MedMNIST v2), train and test parts",
            source="pneumoniamnist",
            load=_parts(load_pneumoniamnist, ("train", "test")),
            datasets={"train": "pneumonia-train", "test": "pneumonia-test"},
        ),
        ExampleData(
            name="ner",
            summary="WNUT-16 tweets with entity tags, dealt IID, a fifth of each silo's held out",
            source="wnut16",
            load=load_wnut16_folders,
            datasets={"train": "ner-train", "test": "ner-test"},
            plan=SplitPlan(test_fraction=0.2),
        ),
        ExampleData(
            name="ccfraud",
            summary="ULB card transactions by amount band, the last fifth in time as test",
            source="creditcard",
            load=load_creditcard_by_time,
            datasets={"train": "ccfraud-train", "test": "ccfraud-test"},
            plan=SplitPlan(scheme=Scheme.COLUMN, column="amount"),
        ),
    )
}
"""Every example ``fedsilo example NAME prepare`` knows, by name."""


@dataclass(frozen=True)
class PreparedExample:
    """What :func:`prepare_example` registered, silo by silo, and the split's manifest."""

    example: str
    records: Mapping[str, Mapping[str, DatasetRecord]]
    manifest: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``fedsilo example NAME prepare --json``."""
        return {
            "example": self.example,
            "datasets": {
                silo: {role: r.model_dump(mode="json") for role, r in roles.items()}
                for silo, roles in self.records.items()
            },
            "split": dict(self.manifest),
        }


def example_data(name: str) -> ExampleData:
    """The example called ``name``; an error lists the known ones."""
    try:
        return EXAMPLES[name]
    except KeyError:
        raise ConfigError(
            f"unknown example '{name}'{did_you_mean(name, EXAMPLES)}; the examples are: "
            f"{listing(sorted(EXAMPLES))}"
        ) from None


def prepare_example(
    workspace: Path,
    name: str,
    *,
    silos: Sequence[str] | None = None,
    plan: SplitPlan | None = None,
    data_root: Path | str | None = None,
    replace_existing: bool = False,
    **overrides: Any,
) -> PreparedExample:
    """Split example ``name``'s data across ``silos`` (default: all the workspace's) and
    register each silo's parts in that silo's catalog as ``sensitive``.

    ``plan`` replaces the example's default split; keyword ``overrides`` change single
    fields of it (``scheme=Scheme.DIRICHLET, alpha=0.5``, ``limits={"train": 3000}``).
    """
    example = example_data(name)
    ws = open_workspace(workspace)
    chosen = tuple(silos) if silos else tuple(ws.silo_names)
    unknown = [s for s in chosen if s not in ws.silo_names]
    if unknown:
        named = ", ".join(f"'{s}'{did_you_mean(s, ws.silo_names)}" for s in unknown)
        raise ConfigError(
            f"workspace {ws.root} has no silo {named} (its silos: {listing(ws.silo_names)})",
            field="silos",
        )
    chosen_plan = replace(plan or example.plan, **overrides) if overrides else plan or example.plan
    if chosen_plan.scheme is Scheme.DIRICHLET and "train" not in example.datasets:
        raise ConfigError(f"example '{name}' has no training part to skew", field="scheme")
    shards = split(example.load(data_root), chosen, chosen_plan)
    records: dict[str, dict[str, DatasetRecord]] = {}
    with tempfile.TemporaryDirectory(prefix=f"fedsilo-{name}-") as tmp:
        paths = write_shards(shards, Path(tmp), source=example.source)
        manifest = json.loads((Path(tmp) / MANIFEST).read_text())
        for silo in chosen:
            kit = ws.kit(silo)
            records[silo] = {}
            for role, dataset in example.datasets.items():
                if role not in paths[silo]:
                    raise ConfigError(f"example '{name}' made no '{role}' part", field=role)
                records[silo][role] = add_dataset(
                    kit,
                    dataset,
                    paths[silo][role],
                    Classification.SENSITIVE,
                    replace=replace_existing,
                )
    return PreparedExample(example=name, records=records, manifest=manifest)
