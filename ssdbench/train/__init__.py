"""Training: `config` (the typed config, presets, and `set_up`: the config resolved for the device
once), `trainer` (`train_runs` / `train_run` / `run_training`: one run or a series, config to
summary), `build` (data, network with group BatchNorm, optimiser, the MLPerf learning-rate schedule,
DDP, AMP), `loop` (one step, one epoch), `fast_step` (the CUDA fast step), `checkpoint` (payload,
atomic files, resume and a resumed config's changes), `run_folder` (the folder's lock and where a
run segment starts, metrics, plots, summary.json), `mllog` (MLPerf logging), `async_eval`
(evaluation during training, scored in the background), `tensorboard` (TensorBoard events),
`score` (the olympic mean of several runs, a submission tree's score), `package` (runs -> submission
tree), `mlperf_checks` (mlperf_logging's checkers: compliance, seeds, RCP, package) and
`demo_model` (the demo model trained once and cached)."""
