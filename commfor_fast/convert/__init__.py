"""`commfor-fast convert`: Hugging Face parquet files and local image folders -> WebDataset shards for DALI.

Entry points: `commfor_fast.convert.run.convert(ConvertSettings(...))` with
`commfor_fast.convert.settings.ConvertSettings`. `run.py` describes the steps,
`plan.py` the deterministic ordering (partitions, shuffles, sample numbers),
`worker.py` how a partition becomes shards, and `commfor_fast.shards` the format.
The kinds of input (HF parquet, folders) are modules of `commfor_fast.sources`,
reached through its registry.
This package file imports nothing, so the CLI can read the settings' defaults
without loading pyarrow.
"""
