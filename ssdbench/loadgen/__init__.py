"""SSD-Large under MLPerf LoadGen (benchmark.md §7, §9): the round's values and the resolved
settings put on LoadGen's TestSettings (`settings`), the query sample library over COCO val in
MLPerf's order and its shared uint8 form (`samples`), the dynamic-batching system under test
(`sut`) and its pool of device workers (`device_pool`), one test run in a run folder published
only on success (`run`), its report.md and pictures (`report`), the round's rules, the detail log
and the round's own tools' values (`rules`), the mAP of an accuracy log by MLPerf's rule
(`accuracy`), the compliance tests and their verification (`compliance`), the submission tree and
its system description (`submission`) with its checker (`submission_check`), and `submission
run` (`pipeline`). The command lines are `ssdbench.cli.loadgen`, `accuracy`, `compliance`,
`submission` and `submission_run`."""
