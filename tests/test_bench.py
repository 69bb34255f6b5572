"""The benchmarks' own checks: progress lines, and warnings on figures not to trust."""

from __future__ import annotations


import pytest

from commfor_fast.bench import common, train_bench


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "_WARNINGS", [])


def test_a_wide_spread_between_repeats_is_a_warning(capsys) -> None:
    common.check_spread("steady", [1.0, 1.05, 0.98], "s")
    assert common.warnings_markdown() == ""
    common.check_spread("noisy", [1.0, 1.6, 1.1], "s")
    err = capsys.readouterr().err
    assert "bench: warning: noisy: its 3 repeats spread over 55% of their median (1 to 1.6 s)" in err
    assert "steady" not in err
    assert common.warnings_markdown().startswith("## Warnings: figures not to trust\n\n- noisy: its 3 repeats")


def test_measure_reports_progress_and_checks_the_spread(capsys) -> None:
    slow = iter([0.0, 0.0, 0.2, 0.0])  # warm-up, then three repeats, one of them much slower

    def run() -> int:
        import time

        time.sleep(next(slow))
        return 10

    timing = common.measure(run, repeats=3, label="toy loader")
    err = capsys.readouterr().err
    assert timing.images == 10 and "bench: toy loader: " in err and "img/s (median of 3)" in err
    assert "bench: warning: toy loader: its 3 repeats spread" in err


def test_a_real_pipeline_faster_than_its_synthetic_bound_is_a_warning(monkeypatch, tmp_path, capsys) -> None:
    speeds = {"--synthetic-data": 5.0, "dali": 4.0, "reference": 6.0}

    def fake_train_once(data, flags, itrs, window, device, threads, label):
        key = next(k for k in speeds if k in flags)
        return {"img/s": speeds[key], "data wait %": 1.0, "peak RSS MB": 1.0, "GPU peak MB": None}

    monkeypatch.setattr(train_bench, "train_once", fake_train_once)
    monkeypatch.setattr(train_bench.torch.cuda, "is_available", lambda: False)
    rows = train_bench.run({"png-1024 preresized": tmp_path}, quick=True)
    assert [round(r["% of bound"]) for r in rows] == [100, 80, 80, 120]
    assert rows[2]["data"] == "png-1024 preresized, no source workers"  # before and after, in one run
    warnings = common.warnings_markdown()
    assert "loader reference: 6 img/s is faster than its synthetic bound (5)" in warnings
    assert "loader dali" not in warnings
    assert "bench: training ViT-Ti/16 384 fp32 b4 on png-1024 preresized, loader dali: 8 iterations" in \
        capsys.readouterr().err


def test_the_host_table_names_every_host_figure() -> None:
    """results.json's host keys each get a row saying what they measure (figures made up)."""
    from commfor_fast.bench import host_bench

    keys = ["plan_us_per_image", "plan_us_per_image_batch_128", "source_us_per_image", "graph_ops_per_iteration",
            "graph_ops_per_iteration_standin", "graph_fixed_ms_per_image", "graph_fixed_ms_per_image_standin",
            "graph_fixed_ms_per_image_batch_128", "graph_real_plans_us_per_image",
            "graph_real_plans_us_per_image_standin",
            "training_thread_us_per_image", "training_thread_us_per_image_no_workers",
            "training_thread_cpu_us_per_image", "training_thread_cpu_us_per_image_no_workers",
            "host_cpu_ms_per_image", "host_cpu_ms_per_image_no_workers", "copy_us_per_image", "eval_pass_start_s",
            "eval_pass_start_s_new_pipeline", "eval_thread_us_per_image", "eval_thread_cpu_us_per_image",
            "eval_host_cpu_ms_per_image", "robustness_thread_us_per_image", "robustness_host_cpu_ms_per_image",
            "robustness_host_cpu_ms_per_level"]
    figures = {k: 1.0 for k in keys} | {"pipeline_batch": 512, "thread_bench_batch": 32,
                                        "thread_bench_batches_per_run": 4, "eval_bench_batch": 16,
                                        "robustness_levels": 9}
    rows = host_bench.rows(figures)
    assert [r["figure"] for r in rows] == keys
    thread_row = rows[keys.index("training_thread_us_per_image")]
    assert "2 source workers + 2 DALI threads, batch 32 x 4 per run" in thread_row["what"]
    assert "9 levels per image from one decode" in rows[-3]["what"]


def test_the_consuming_thread_is_measured_paced_and_per_image(monkeypatch) -> None:
    """`paced_cost`: a warm-up and a free-running repeat set the pace; the timed repeats
    each follow a stand-in step, and the figures are per image (a toy stream)."""
    from commfor_fast.bench import host_bench

    calls: list[str] = []
    sleeps: list[float] = []
    monkeypatch.setattr(host_bench.time, "sleep", sleeps.append)

    def batches():
        while True:
            calls.append("batch")
            yield 0

    figures = host_bench.paced_cost(batches(), calls=3, repeats=2, images=12, label="toy")
    assert len(calls) == 3 * 4 and len(sleeps) == 3 * 2  # warm-up, free-running, 2 paced repeats
    assert all(s == sleeps[0] >= 0 for s in sleeps)  # one pace: twice a free-running call
    assert set(figures) == {"wall_us", "own_us", "host_cpu_ms"} and figures["wall_us"] >= 0


def test_every_executor_ablation_row_is_a_valid_option() -> None:
    """The CPU ablation's and the GPU check's executor rows each name an `--executor`
    option and a value it takes (a typo would cost a device run)."""
    from commfor_fast.bench import gpu_steps, host_bench
    from commfor_fast.pipelines.executor import ExecutorOptions

    flags = [f"{option}={value}" for option, value in host_bench.ABLATION if value]
    flags += [options["executor"] for _, options in gpu_steps.ABLATIONS if "executor" in options]
    for flag in flags:
        options = ExecutorOptions.from_flags([flag])
        assert options != ExecutorOptions(), flag
        options.pipeline_kwargs()  # enum names resolve
    assert {f.split("=")[0] for f in flags} == {"source_workers", "concurrency", "stream_policy",
                                                "prefetch_queue_depth", "source_prefetch", "resize_minibatch_size"}
