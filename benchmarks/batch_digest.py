"""Digests of training and evaluation batch streams, to show a change keeps every batch bit-identical.

    .venv/bin/python benchmarks/batch_digest.py WORKDIR      (from the checkout root)

Builds the test suite's small HF replica and folder tree in WORKDIR (once), converts them
verbatim and pre-resized, then prints the first 16 hex digits of the sha256 of 4
training batches of each loader (default and a custom RSA) and of a whole evaluation
pass (clean, and with four perturbation levels). Run it before and after a change and
compare the lines: the stream of every (data, loader, RSA, levels) combination.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "tests"))
import torch  # noqa: E402

import conftest  # noqa: E402
from commfor_fast.pipelines import loader  # noqa: E402
from commfor_fast.pipelines.perturb import parse_perturbations  # noqa: E402
from commfor_fast.pipelines.plan import RSAConfig  # noqa: E402
from commfor_fast.shards import Manifest  # noqa: E402


def digest(batches: list) -> str:
    h = hashlib.sha256()
    for b in batches:
        for t in (b.images, b.labels, b.generator_ids, b.sample_numbers, *b.levels):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf" / "CommunityForensics"
    if not hf.exists():
        from commfor_fast.demo.hf_replica import write_hf_replica
        write_hf_replica(hf, conftest.hf_rows(conftest.HF_LAYOUT), rows_per_file=7, row_group_size=3)
        conftest.write_folder_tree(work / "folders" / "local", conftest.FOLDER_LAYOUT)
    for name, extra in (("verbatim", {}), ("pre", {"preresize": 256})):
        out = work / name
        if not (out / "manifest.json").exists():
            conftest.run_convert(out, hf_split="Systematic+Manual", val_frac=0.2, hf_repo=str(hf),
                                 folders=[work / "folders" / "local"], **extra)
        manifest = Manifest.load(out)
        cpu = torch.device("cpu")
        for engine in ("dali", "reference"):
            for rsa_name, rsa in (("default", RSAConfig()),
                                  ("custom", RSAConfig.from_flags("JPEGinMemory,RRCWithRandomIntpl,RandomRotation,RandomPadding,RandomCutout", 1, 3))):
                s = loader.create_train_stream(engine, out, manifest, "train", device=cpu, batch_size=4, crop=224,
                                               rsa=rsa, seed=5, rank=0, world_size=1, num_threads=1,
                                               **({"batches_per_run": 2} if engine == "dali" else {}))
                batches = [next(s) for _ in range(4)]
                s.close()
                print(f"train {name} {engine} {rsa_name}: {digest(batches)}", flush=True)
            levels = parse_perturbations(["jpeg=50", "blur=1.0", "noise=0.05", "resize=0.5"])
            for lv_name, lv in (("clean", ()), ("perturb", levels)):
                ev = loader.create_eval_loader(engine, out, manifest, "val", device=cpu, batch_size=4, crop=224,
                                               rank=0, world_size=1, num_threads=1, levels=lv, seed=1)
                print(f"eval {name} {engine} {lv_name}: {digest(list(ev))}", flush=True)
                ev.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
