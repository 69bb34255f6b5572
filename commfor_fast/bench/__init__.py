"""The benchmarks behind `commfor-fast bench` and `benchmarks/gpu_check.sh`.

One module per benchmark (converter, pipelines, host cost of the GPU configuration,
training loop, DALI's filters against PIL's, evaluation memory), shared timing and tables in `common`,
generated data in `data` (which uses `common`), and `run_all` composing them. Each
module also runs alone: `python -m commfor_fast.bench.<name> --help` (`script` holds
the command line the pipeline, host and training benchmarks share).
"""
