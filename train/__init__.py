"""Training vitjax models: a sharded, resumable loop (``python -m train``) and the end-to-end demo
(``python -m train.demo``). Module map: config (flags), mesh (device mesh, logical -> mesh rules), state
(sharded init), optim, data (grain pipelines), steps (pure), plan (a run's step before any array exists), loop
(all I/O), checkpoint, metrics; aot (the step compiled for a TPU topology, ``python -m train.aot``) with aot_hlo
(reading the compiled HLO), aot_report (the report and its table) and aot_search (``--find-batch``)."""
