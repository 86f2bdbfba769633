"""pbkit: a reproducibility kit for structural pruning of vision models.

Data flows one way: config -> model -> prune -> finetune -> export -> measure -> record -> report.

The Python API (:mod:`pbkit.api`) is the one the CLI runs::

    import pbkit
    run = pbkit.prune(model, example_inputs=x, method="l2", speedup=2.0)
    print(run.bench(backends=["torch-cpu", "ort-cpu"]))
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["BenchResult", "Run", "Speedup", "__version__", "prune", "run"]
_API = ("BenchResult", "Run", "Speedup", "prune", "run")


def __getattr__(name: str) -> Any:
    """The API, imported when first used (``import pbkit`` itself stays light: ``pbkit --version``
    needs no torch)."""
    if name in _API:  # (by name: the package itself sits above no layer; see pyproject's contracts)
        return getattr(importlib.import_module("pbkit.api"), name)
    raise AttributeError(f"module 'pbkit' has no attribute {name!r}")
