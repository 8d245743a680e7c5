"""Content-addressed tensor caches shared by the jobs of a sweep (see docs/caching.md).

* ``store``: the content-addressed, locked, checksummed ``TensorStore``;
* ``dense``: the dense references of every task (``DenseEntry``; KL: the dense model's final hidden states over
  a job's windows, ``DenseCache``);
* ``compressed``: compressed weights, one codec per storage kind a compressor declares (mask, weights);
* ``keys``: what keys are made of besides the config (device, weights identity, token ids, code, versions);
* ``settings``: the ``cache:`` config node and which steps of a job go through which cache.
"""
from lcc.cache.codes import pack_bits, unpack_bits  # noqa: F401
from lcc.cache.compressed import CODECS, CompressedCache, Compression  # noqa: F401
from lcc.cache.dense import DenseCache, DenseEntry, DenseReference, dense_inputs  # noqa: F401
from lcc.cache.keys import source_fingerprint  # noqa: F401
from lcc.cache.settings import CacheSettings, settings  # noqa: F401
from lcc.cache.store import FORMAT, InvalidEntry, TensorStore, file_checksum, key_of  # noqa: F401
