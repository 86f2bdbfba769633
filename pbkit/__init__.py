"""pbkit: a reproducibility kit for structural pruning of vision models.

Data flows one way: config -> model -> prune -> finetune -> export -> measure -> record -> report.
"""

__version__ = "0.1.0"
