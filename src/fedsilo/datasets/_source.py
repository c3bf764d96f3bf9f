"""Where a public dataset's original files are, and what to say when one is missing.

fedsilo never downloads data: a loader reads the files a user downloaded, from a root
folder given as an argument or, by default, by the ``FEDSILO_DATA`` environment variable.
Each dataset has its own sub-folder there (``$FEDSILO_DATA/fashion-mnist/...``), holding
the files exactly as their publisher ships them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedsilo._suggest import did_you_mean, listing
from fedsilo.errors import ConfigError

__all__ = ["DATA_ENV", "SOURCES", "DataSource", "data_root", "source_file"]

DATA_ENV = "FEDSILO_DATA"
"""The environment variable that names the folder holding the public datasets."""


@dataclass(frozen=True)
class DataSource:
    """One public dataset: its folder under the data root, its files, where to get them."""

    name: str
    folder: str
    files: tuple[str, ...]
    title: str
    download: str
    licence: str


SOURCES: dict[str, DataSource] = {
    source.name: source
    for source in (
        DataSource(
            name="fashion-mnist",
            folder="fashion-mnist",
            files=(
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ),
            title="Fashion-MNIST (Zalando, Xiao et al. 2017)",
            download=(
                "the Fashion-MNIST GitHub release (github.com/zalandoresearch/fashion-mnist, "
                "data/fashion), or Debian's package dataset-fashion-mnist "
                "(/usr/share/datasets/fashion-mnist/)"
            ),
            licence="MIT",
        ),
        DataSource(
            name="pneumoniamnist",
            folder="pneumoniamnist",
            files=("pneumoniamnist.npz",),
            title="PneumoniaMNIST (MedMNIST v2, Yang et al. 2023)",
            download="medmnist.com (the Zenodo record of MedMNIST v2, file pneumoniamnist.npz)",
            licence="CC BY 4.0",
        ),
        DataSource(
            name="creditcard",
            folder="creditcard",
            files=("creditcard.csv.gz",),
            title="Credit Card Fraud Detection (ULB Machine Learning Group)",
            download=(
                "Kaggle, dataset mlg-ulb/creditcardfraud (creditcard.csv; gzip it to "
                "creditcard.csv.gz)"
            ),
            licence="Open Database License",
        ),
        DataSource(
            name="wnut16",
            folder="wnut16",
            files=("wnut16_train.txt",),
            title="WNUT-16 Twitter named entities (training part)",
            download=(
                "the WNUT 2016 shared-task repository (github.com/aritter/twitter_nlp, "
                "data/annotated/wnut16/data/train, saved as wnut16_train.txt)"
            ),
            licence="research use (WNUT 2016 shared task)",
        ),
    )
}
"""Every public dataset fedsilo has a loader for, by name."""


def data_root(root: Path | str | None = None) -> Path:
    """The folder holding the public datasets: ``root``, else ``$FEDSILO_DATA``.

    A :class:`ConfigError` when neither is given says how to set one.
    """
    if root is not None:
        return Path(root)
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        raise ConfigError(
            f"no data folder given: pass its path, or set {DATA_ENV} to the folder that "
            f"holds the datasets (one sub-folder each: {', '.join(sorted(SOURCES))})",
            field=DATA_ENV,
        )
    return Path(value)


def source_file(dataset: str, filename: str, root: Path | str | None = None) -> Path:
    """The path of one original file of ``dataset``; a clear error when it is missing.

    The error names the path looked at and where the dataset can be downloaded.
    """
    try:
        source = SOURCES[dataset]
    except KeyError:
        raise ConfigError(
            f"unknown dataset '{dataset}'{did_you_mean(dataset, SOURCES)}; known: "
            f"{listing(sorted(SOURCES))}"
        ) from None
    path = data_root(root) / source.folder / filename
    if not path.is_file():
        raise ConfigError(
            f"{source.title}: file {filename} is missing. Download it from "
            f"{source.download}, and put it in {path.parent} (the '{source.folder}' folder "
            f"of the data root; set {DATA_ENV} or pass the root)",
            file=str(path),
        )
    return path
