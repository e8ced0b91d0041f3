"""Training and evaluation: the typed config and presets (`config`), the training loop, run and its
parts (`train`, `session`, `parts`, `fast_step`), distributed launch (`launch`, `distributed`),
checkpoints and run folders (`checkpoint`, `run_folder`), MLPerf logging (`mllog`), COCO mAP
(`coco_eval`, `evaluate`), scoring (`score`) and the `train` / `eval` / `demo` commands."""
