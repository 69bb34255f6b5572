"""`commfor-fast bench`: the converter, pipeline and training benchmarks in one run.

Writes `BENCH.md` (the machine, the date and one table per benchmark),
`results.json` (every figure, machine-readable; among them the host-cost keys of
`host_bench.py`) and `bench.png` (pipeline images/s per engine) into the output
folder, and prints the Markdown. `--quick` runs a reduced set (a few minutes on 2 CPU cores);
`--scale` runs only the scale benchmark (`scale_bench.py`: `scale.md` and `results.json`).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from commfor_fast.bench import convert_bench, host_bench, pipeline_bench, scale_bench, train_bench
from commfor_fast.bench.common import machine, markdown_table, warnings_markdown
from commfor_fast.bench.data import bench_shards


def _chart(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Grouped horizontal bars on a linear axis: images/s of every engine, per shard kind
    and mode, each bar labelled with its figure and its ratio to the reference executor
    on the same source (per core, as the tables). Saved as PNG (200 dpi) and PDF."""
    from matplotlib.figure import Figure

    groups = sorted({(r["shards"], r["mode"]) for r in rows})
    engines = sorted({r["engine"] for r in rows})
    fig = Figure(figsize=(9, 0.55 * len(groups) * len(engines) / 2 + 1.8))
    ax = fig.add_subplot()
    height = 0.8 / len(engines)
    top = max(r["img/s"] for r in rows)
    for k, engine in enumerate(engines):
        mine = [next((r for r in rows if (r["shards"], r["mode"]) == g and r["engine"] == engine), None)
                for g in groups]
        ys = [i + k * height for i in range(len(groups))]
        ax.barh(ys, [r["img/s"] if r else 0 for r in mine], height=height, label=engine)
        for y, r in zip(ys, mine):
            if r:
                ratio = r.get("x reference per core")
                text = f"{r['img/s']:.0f}" + (f"  ({ratio:.1f}x per core)" if ratio is not None else "")
                ax.text(r["img/s"] + 0.01 * top, y, text, va="center", fontsize=7)
    ax.set_yticks([i + height * (len(engines) - 1) / 2 for i in range(len(groups))])
    ax.set_yticklabels([f"{s} / {m}" for s, m in groups], fontsize=8)
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("images/s (ratio: images/s per core against the reference executor on the same source)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=200)
    fig.savefig(path.with_suffix(".pdf"))
    return path


def run_all(out: Path, quick: bool, shards: list[Path] | None = None, threads: int = 2,
            scale: list[int] | None = None) -> Path:
    """Run every benchmark, or with `scale` (sample counts; [] for its defaults) only
    `scale_bench`; returns the path of BENCH.md (`scale.md`)."""
    out.mkdir(parents=True, exist_ok=True)
    if scale is not None:
        results = scale_bench.run(out, tuple(scale) or scale_bench.SIZES)
        (out / "results.json").write_text(json.dumps({"date": datetime.date.today().isoformat(),
                                                      "machine": machine(), **results}, indent=2) + "\n")
        return out / "scale.md"
    sections = [f"# commfor-fast benchmarks\n\n{datetime.date.today().isoformat()}, {machine()}"
                f"{', quick set' if quick else ''}\n"]
    if shards is None:
        tables = convert_bench.run(out / "convert", quick=quick)
        sections.append("## Converter\n\n" + markdown_table(tables["conversion"], convert_bench.CONVERT_COLUMNS) +
                        "\n\nSteps of converting one image (one process):\n\n" +
                        markdown_table(tables["steps"], convert_bench.STAGE_COLUMNS))
        found = bench_shards(out / "data", quick)
    else:
        found = {p.name: p for p in shards}
    rows = pipeline_bench.run(found, quick, threads)
    sections.append("## Pipelines (batches from the torch-facing loaders)\n\n" +
                    markdown_table(rows, pipeline_bench.COLUMNS))
    chart = _chart(rows, out / "bench.png", f"Pipeline throughput by engine - {machine()}, "
                                            f"{datetime.date.today().isoformat()}")
    results: dict[str, Any] = {"date": datetime.date.today().isoformat(), "machine": machine(), "quick": quick,
                               "pipelines": rows}
    host = host_bench.run(found, quick)
    results.update(host)
    sections.append("## Host cost of the GPU configuration (measured on this CPU)\n\n" +
                    markdown_table(host_bench.rows(host), host_bench.COLUMNS) +
                    "\n\nExecutor options, one changed at a time (training batches, CPU backend):\n\n" +
                    markdown_table(host["executor_ablation"], host_bench.ABLATION_COLUMNS))
    if any("preresized" in name for name in found):
        results["training"] = rows = train_bench.run(found, quick, threads)
        sections.append("## Training loop: real pipeline vs synthetic batches\n\n" +
                        markdown_table(rows, train_bench.COLUMNS))
    sections.append(warnings_markdown())
    text = "\n\n".join(s for s in sections if s) + f"\n\n![pipeline throughput]({chart.name})\n"
    path = out / "BENCH.md"
    path.write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text)
    return path
