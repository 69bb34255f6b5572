"""The scores file's origin columns: every scored image traced back to its original file or HF row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import read_all_samples

from commfor_fast.evaluate import sample_origins
from commfor_fast.shards import Manifest


def test_origins_name_the_original_file_or_row(converted: Path, hf_replica: Path, folder_tree: Path,
                                               extra_real: Path) -> None:
    manifest = Manifest.load(converted)
    samples = read_all_samples(converted)
    sets = [name for name, rows in samples.items() for _ in rows]
    keys = [int(key) for rows in samples.values() for key, _ in rows]
    metas = [json.loads(members["json"]) for rows in samples.values() for _, members in rows]
    order = np.random.default_rng(0).permutation(len(keys))  # any order, as scores come from many ranks
    names, sources = sample_origins(converted, manifest, [sets[i] for i in order], np.asarray(keys)[order])
    seen_sources = set()
    for i, name, source in zip(order, names, sources):
        meta = metas[i]
        if meta["source"] == "hf":
            assert (name, source) == (meta["image_name"], hf_replica.name)
        else:
            assert name == meta["path"] and source == meta["root"]
        seen_sources.add(source)
    # the roots by their names (shards carry no local paths); each original is found under its root
    roots = {root.name: root for root in (hf_replica, folder_tree, extra_real)}
    assert seen_sources == roots.keys()
    assert all((roots[source] / name).is_file() for name, source in zip(names, sources) if source != hf_replica.name)
