"""Training vitjax models: a sharded, resumable loop (``python -m train``) and the end-to-end demo
(``python -m train.demo``). Module map: config (flags), mesh (device mesh, logical -> mesh rules), state
(sharded init), optim, data (grain pipelines), steps (pure), loop (all I/O), checkpoint, metrics."""
