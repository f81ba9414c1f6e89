"""Training vitjax models: a sharded, resumable loop (``python -m train``), checkpoint averaging
(``python -m train.average``) and the end-to-end demo (``python -m train.demo``). Module map: config (flags),
mesh (device mesh, logical -> mesh rules), state (sharded init), optim (timm's optimizers), schedule (timm's lr
schedules), data (grain pipelines), steps (pure), plan (a run's step before any array exists), loop (all I/O),
runs (``--pretrained`` loading and its report), checkpoint, metrics; aot (the step compiled for a TPU topology,
``python -m train.aot``) with aot_hlo (reading the compiled HLO), aot_report (the report and its table) and
aot_search (``--find-batch``)."""
