"""Where data lives: each silo's catalog of classified datasets.

A silo's :class:`Catalog` records every dataset in its storage root with one
classification and a digest; :func:`add_dataset` registers data while honouring the
classification the federation spec declares for it.
"""

from fedsilo.storage._catalog import Catalog, DatasetRecord, add_dataset, open_catalog

__all__ = ["Catalog", "DatasetRecord", "add_dataset", "open_catalog"]
