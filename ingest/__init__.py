"""cellwatch.ingest: the consumer loop (poll, process, write, commit), window state per partition, the sinks."""
