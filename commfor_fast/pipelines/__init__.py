"""Preprocessing and RandomStateAugmentation, in two executors that share one op table.

- `preprocess`: the deterministic sizes, crop offsets and normalisation (SPEC section 2);
- `ops`: the RSA ops, their parameter ranges and per-sample sampling (the one table);
- `plan`: draws a sample's augmentation plan (op counts, order, parameters);
- `reference`: executes plans and evaluation preprocessing with PIL/torchvision (the oracle);
- `perturb`: the robustness perturbations of `eval --perturb`, each with both implementations;
- `dali`: the same graphs as NVIDIA DALI pipelines, for device="gpu" or "cpu";
- `decode_check`: DALI's decoder on single images, to name the sample behind a failure;
- `loader`: PyTorch-facing loaders over either executor, for single process or torchrun.
- `synthetic`: the stream of `train --synthetic-data` (one batch, the loop's upper bound).
"""
