"""Distributed indexing on Ray Data: every GPU (or CPU) of a cluster embeds, one index results.

Installed with ``pip install 'mitsuke[ray]'``; Ray is imported only when a run starts.

>>> from mitsuke.indexer import IndexBuilder
>>> from mitsuke.indexer.distributed import index_with_ray
>>> with IndexBuilder.open("idx", model="./model") as b:        # doctest: +SKIP
...     index_with_ray(b, ["corpus/"])                          # a local cluster on 127.0.0.1
...     index_with_ray(b, ["more/"], address="10.0.0.5:6379")   # or join a cluster
"""
from __future__ import annotations

from mitsuke.indexer.distributed.driver import index_with_ray

__all__ = ["index_with_ray"]
