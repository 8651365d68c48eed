"""The data layer: readers for the real corpora, label mapping, dialogue context,
seeded splits, and prepared data with a manifest.

>>> from knot.data import Example, prepare_data, load_split, read_manifest

* :mod:`knot.data.readers` -- streaming readers (MARC/McAuley Amazon reviews, MELD,
  EmoryNLP, SILICONE, GoEmotions, SST trees, generic CSV and JSON lines);
* :mod:`knot.data.labels` -- raw label -> task label, with per-file counts;
* :mod:`knot.data.context` -- utterance + previous turns for ERC;
* :mod:`knot.data.splits` -- stratified, group-aware, seeded splits and subsets;
* :mod:`knot.data.prepare` -- ``prepare_data``, ``load_split``, ``read_manifest``.
"""

from knot.data.example import Example
from knot.data.prepare import (
    data_status,
    format_summary,
    load_split,
    prepare_data,
    read_manifest,
    task_labels,
)

__all__ = [
    "Example",
    "prepare_data",
    "load_split",
    "read_manifest",
    "data_status",
    "format_summary",
    "task_labels",
]
