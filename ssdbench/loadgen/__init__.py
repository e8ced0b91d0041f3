"""SSD-Large under MLPerf LoadGen (benchmark.md §7): settings resolved from four layers
(`settings`), the query sample library over COCO val (`qsl`), the dynamic-batching system under
test (`sut`), one test run (`run`) in a run folder published only on success (`staging`), the
human report (`report`) and the mAP of an accuracy log (`accuracy`). The command lines are
`ssdbench.cli.loadgen` and `ssdbench.cli.accuracy`."""
