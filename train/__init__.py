"""Training vitjax models: a sharded, resumable loop (``python -m train``), checkpoint averaging
(``python -m train.average``) and the end-to-end demo (``python -m train.demo``). Module map: config (flags),
mesh (device mesh, logical -> mesh rules), state (sharded init), optim (timm's optimizers), schedule (timm's lr
schedules), data (grain pipelines), steps (pure), loop (all I/O), runs (``--pretrained`` loading and its
report), checkpoint, metrics."""
