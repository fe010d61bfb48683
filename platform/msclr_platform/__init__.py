"""msclr_platform: the Ray Train / Ray Tune / MLflow layer and the `msclr` command.

The pure method lives in `msclr_core` (no ray, no mlflow); this package wires it to
distributed training, sweeps and experiment tracking.
"""

__version__ = "0.1.0"
