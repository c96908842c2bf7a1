"""cellwatch.detect: station anomaly detectors, calibration, incidents, the defect model and the registry."""
