"""The OOD-detection study: OpenOOD v1.5 protocol, metrics, network wrapper and detectors."""
