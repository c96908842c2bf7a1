"""Errors the CLI turns into one clear line and a non-zero exit (no traceback)."""


class CellwatchError(Exception):
    """A problem the user can fix: bad input file, bad argument, unreachable service, unknown model."""

    exit_code = 2


class ServiceUnavailable(CellwatchError):
    """A service (Kafka, PostgreSQL, Grafana) did not answer."""

    exit_code = 3
