"""Side-by-side benchmarks of vitjax against timm / transformers, in one process, on one machine.

    python -m benchmarks                       # CPU, fp32, every registered seed model; table + JSON
    python -m benchmarks --compile             # also torch.compile (slow to compile)
    python -m benchmarks --device gpu          # CUDA, bf16, larger batches, MFU
    make bench

What is measured (see ``python -m benchmarks --help``; results in benchmarks/results_cpu.json and docs/performance.md):

* inference images/s at batch 1 (latency) and at the throughput batch, and a training step (forward,
  cross-entropy, backward, global-norm clipping, AdamW) for vitjax under ``jax.jit`` and for the reference
  model in torch eager (and under ``torch.compile``); sides alternate round by round so drift hits all;
* vitjax's compile time (``lower`` + ``compile``) and the first call of ``torch.compile``;
* each side's share of the machine's measured matmul peak, from the FLOPs XLA counts in the compiled step;
* peak resident memory of each side, each in a fresh process (``ru_maxrss``);
* conversion of the largest seed checkpoints from a ``.safetensors`` file: wall time and peak memory against
  the file's size.
"""
