"""`commfor-fast bench`: the converter, pipeline and training benchmarks in one run.

Writes `BENCH.md` (the machine, the date and one table per benchmark),
`results.json` (every figure, machine-readable; among them the host-cost keys of
`host_bench.py`) and `bench.png` (pipeline images/s per engine) into the output
folder, and prints the Markdown. `--quick` runs a reduced set (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from commfor_fast.bench import convert_bench, host_bench, pipeline_bench, train_bench
from commfor_fast.bench.common import machine, markdown_table, warnings_markdown
from commfor_fast.bench.data import bench_shards


def _chart(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped horizontal bars: images/s of every engine, per shard kind and mode."""
    from matplotlib.figure import Figure

    groups = sorted({(r["shards"], r["mode"]) for r in rows})
    engines = sorted({r["engine"] for r in rows})
    fig = Figure(figsize=(9, 0.7 * len(groups) * len(engines) / 2 + 1.5))
    ax = fig.add_subplot()
    height = 0.8 / len(engines)
    for k, engine in enumerate(engines):
        values = [next((r["img/s"] for r in rows if (r["shards"], r["mode"]) == g and r["engine"] == engine), 0)
                  for g in groups]
        ax.barh([i + k * height for i in range(len(groups))], values, height=height, label=engine)
    ax.set_yticks([i + height * (len(engines) - 1) / 2 for i in range(len(groups))])
    ax.set_yticklabels([f"{s} / {m}" for s, m in groups])
    ax.set_xscale("log")
    ax.set_xlabel("images/s (log scale)")
    ax.set_title("Pipeline throughput by engine")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def run_all(out: Path, quick: bool, shards: list[Path] | None = None, threads: int = 2) -> Path:
    """Run every benchmark; returns the path of BENCH.md."""
    out.mkdir(parents=True, exist_ok=True)
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
    chart = _chart(rows, out / "bench.png")
    results: dict[str, Any] = {"date": datetime.date.today().isoformat(), "machine": machine(), "quick": quick,
                               "pipelines": rows}
    host = host_bench.run(found, quick)
    results.update(host)
    sections.append("## Host cost of the GPU configuration (measured on this CPU)\n\n" +
                    markdown_table(host_bench.rows(host), host_bench.COLUMNS))
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
