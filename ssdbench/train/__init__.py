"""Training: `config` (the typed config and presets), `trainer` (`run_training`: one run from
config to summary), `build` (data, network, optimiser, DDP, AMP), `loop` (one step, one epoch),
`fast_step` (the CUDA fast step), `schedule` (the MLPerf learning-rate schedule), `checkpoint`
(payload, atomic files, resume), `run_folder` (metrics, plots, summary.json), `sync_bn` (group
BatchNorm and BN averaging), `mllog` (MLPerf logging and the compliance checker), `async_eval`
(evaluation during training, scored in the background), `score` (the olympic mean of several
runs, a submission tree's score), `submission` (runs -> submission tree) and `mlperf_checks`
(mlperf_logging's checkers)."""
