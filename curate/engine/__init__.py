"""Running a pipeline: the spec, the one runner, work units, tasks, executors and progress."""
