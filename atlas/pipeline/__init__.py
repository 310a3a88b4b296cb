"""The ingest pipeline: a unit of work (one model load → all its variants) is scored by one
function and written by one writer.

- ``units``: what a unit and its variants are, and the scoring config id that makes two
  scorings the same (decided before any model loads);
- ``score``: loading, scoring, lens, quantization and weight sketch of a unit → vector records;
- ``records``: one vector as the store writes it, and its Parquet form (shards, pending files);
- ``writer``: the one way a record enters the atlas (in-process ingest and the bulk merger);
- ``ingest``: ``Atlas.ingest``, the pipeline run in-process on a one-unit plan.

``atlas bulk`` (atlas.bulk) runs the same units in workers that write shards, with one merger;
``atlas demo`` describes its suite as a manifest and runs it through bulk.
"""
