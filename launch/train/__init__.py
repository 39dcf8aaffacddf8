"""One training rank: the worker each process runs, its DeepSpeed engine, the loop, the batches it feeds, its
checkpoints (layout-free shards, resharding) and the Hugging Face export, the device, stop signals and the watchdog,
and the test-only fault injection in faults.py. The library workarounds it needs are launch/compat.py's."""
