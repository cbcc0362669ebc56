"""Corpus preparation -> manifests; synthetic corpora; webdataset shards and length-bucketed batches."""
