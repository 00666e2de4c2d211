"""The ``stream-meta`` commands: thin wrappers that parse, build and run (see :mod:`stream_meta.cli.main`)."""
