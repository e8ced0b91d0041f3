"""SSD-Large under MLPerf LoadGen (benchmark.md §7, §9): the MLPerf rounds as data (`rounds`),
settings resolved from the round and four layers (`settings`) and set on LoadGen's TestSettings
(`apply`), the query sample library over COCO val in MLPerf's order (`qsl`), the dynamic-batching
system under test (`sut`), one test run (`run`) in a run folder published only on success
(`staging`), its detail log (`detail_log`), the human report (`report`), the mAP of an accuracy
log by MLPerf's rule (`accuracy`), the compliance tests (`compliance`, `verify`), and the
submission tree (`submission`, `sysinfo`) with its checker (`checker`, `rules`). The command lines
are `ssdbench.cli.loadgen`, `accuracy`, `compliance` and `submission`."""
