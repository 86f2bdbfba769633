"""OpenVINO and NNCF without their telemetry: ``import openvino`` initialises OpenVINO's telemetry
(a client id under ``~/intel`` and an analytics event over the network) unless the user's consent
file declines it or it runs "in CI"; NNCF sends its own unless ``NNCF_CI`` is set. pbkit makes no
network attempt: the first import runs with ``CI=true`` (then restored, so nothing else sees it),
which declines consent for the process's telemetry singleton; ``NNCF_CI=1`` stays set, as
``ORT_DISABLE_TELEMETRY`` does for ONNX Runtime."""

from __future__ import annotations

import os
import sys
from typing import Any


def openvino() -> Any:
    """The ``openvino`` module, imported with its telemetry declined."""
    os.environ["NNCF_CI"] = "1"
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        import openvino as ov  # type: ignore[import-untyped]  # (no type information)
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before
    return ov


def nncf() -> Any:
    """The ``nncf`` module, after OpenVINO (its telemetry declined); NNCF's own is a no-op."""
    openvino()
    import nncf as module  # type: ignore[import-untyped]

    return module
