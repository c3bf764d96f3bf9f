"""Real data for federations: loaders of public datasets, partitioners, per-silo shards.

* Loaders read the original files from a data root (default ``$FEDSILO_DATA``):
  :func:`load_fashion_mnist`, :func:`load_pneumoniamnist`, :func:`load_creditcard`,
  :func:`load_wnut16`. A missing file is an error naming it and where to download it;
  nothing is ever downloaded.
* Partitioners deal rows to silos, each row exactly once, deterministically from a seed:
  :func:`iid_partition`, :func:`dirichlet_partition`, :func:`column_partition`,
  :func:`time_partition`.
* :func:`split` and :func:`write_shards` turn a dataset into per-silo files
  (``fedsilo data split``); :func:`prepare_example` registers an example's shards in each
  silo's catalog as ``sensitive`` data (``fedsilo example NAME prepare``).
* For the examples' own formats: :func:`chronological_parts` (the latest rows as test),
  :func:`sliding_windows` (each row's preceding rows, for sequence models),
  :class:`SentenceFolder` and :func:`read_sentences` (tagged sentences as folders).
"""

from fedsilo.datasets._loaders import (
    load_creditcard,
    load_dataset,
    load_fashion_mnist,
    load_npz,
    load_pneumoniamnist,
    load_wnut16,
    read_conll,
    read_idx,
)
from fedsilo.datasets._partition import (
    ColumnRule,
    Partition,
    check_partition,
    column_partition,
    column_rule,
    dirichlet_partition,
    iid_partition,
    time_partition,
    time_rule,
)
from fedsilo.datasets._prepare import (
    EXAMPLES,
    ExampleData,
    PreparedExample,
    example_data,
    load_digits,
    prepare_example,
)
from fedsilo.datasets._records import Arrays, Sentence, Sentences, Shardable
from fedsilo.datasets._sequences import (
    chronological_parts,
    load_creditcard_by_time,
    sliding_windows,
)
from fedsilo.datasets._source import DATA_ENV, SOURCES, DataSource, data_root, source_file
from fedsilo.datasets._split import (
    MANIFEST,
    Scheme,
    Shards,
    SplitPlan,
    parse_plan,
    split,
    write_shards,
)
from fedsilo.datasets._tagged import SentenceFolder, load_wnut16_folders, read_sentences

__all__ = [
    "DATA_ENV",
    "EXAMPLES",
    "MANIFEST",
    "SOURCES",
    "Arrays",
    "ColumnRule",
    "DataSource",
    "ExampleData",
    "Partition",
    "PreparedExample",
    "Scheme",
    "Sentence",
    "SentenceFolder",
    "Sentences",
    "Shardable",
    "Shards",
    "SplitPlan",
    "check_partition",
    "chronological_parts",
    "column_partition",
    "column_rule",
    "data_root",
    "dirichlet_partition",
    "example_data",
    "iid_partition",
    "load_creditcard",
    "load_creditcard_by_time",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "load_pneumoniamnist",
    "load_wnut16",
    "load_wnut16_folders",
    "parse_plan",
    "prepare_example",
    "read_conll",
    "read_idx",
    "read_sentences",
    "sliding_windows",
    "source_file",
    "split",
    "time_partition",
    "time_rule",
    "write_shards",
]
