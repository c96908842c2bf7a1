"""cellwatch: watches battery-cell production lines for process anomalies and future defective cells."""

__version__ = "0.1.0"
