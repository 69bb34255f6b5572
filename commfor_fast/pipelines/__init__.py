"""Preprocessing and RandomStateAugmentation, in two executors that share one op table.

Words: an *executor* applies plans to pixels (`reference`, `dali`); a *loader* serves
batches of a converted set to PyTorch through one executor, chosen with `--loader`.

- `preprocess`: the deterministic sizes, crop offsets and normalisation (SPEC section 2);
- `ops`: the RSA ops, each registered once with its ranges, per-image and per-batch draws;
- `plan`: draws a sample's augmentation plan (op counts, order, parameters);
- `reference`: executes plans and evaluation preprocessing with PIL/torchvision (the oracle);
- `perturb`: the robustness perturbations of `eval --perturb`, each with both implementations;
- `dali`: the same graphs as NVIDIA DALI pipelines, for device="gpu" or "cpu";
- `decode_check`: DALI's decoder on single images, to name the sample behind a failure;
- `batch`: the `Batch` every loader yields, and the `TrainStream` / `EvalLoader` protocols;
- `loader`: the factories that build the loader `--loader` names (backends imported lazily);
- `dali_loader`, `reference_loader`: the two loaders, for single process or torchrun;
- `damaged`: naming the damaged sample behind a decoding failure.
- `synthetic`: the stream of `train --synthetic-data` (one batch, the loop's upper bound).
"""
