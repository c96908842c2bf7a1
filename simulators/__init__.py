"""cellwatch.simulators: the battery-cell line model, the fault library and the producers."""
