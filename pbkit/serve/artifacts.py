"""A run's ONNX files, pushed with its record when asked (``pbkit push --artifacts``).

Only the files a stored record lists may be pushed, each under the name and with the sha256 the
record gives it (``artifacts.onnx.<variant>`` and the INT8 ``.onnx`` files of
``quantization.artifacts``): the service checks the bytes against that sha256 and refuses a file
over its size limit (``pbkit serve --max-artifact-mib``) with 413 before reading it. The bytes are
kept as files named by their sha256 under the service's ``--work`` folder (the store keeps their
name, size and sha256), so the same file pushed twice, or by two records, is kept once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkit.serve.ingest import Refused

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}\.onnx$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_ARTIFACT_BYTES = 256 << 20  # a ResNet-50's ONNX is about 100 MB; --max-artifact-mib changes it


@dataclass(frozen=True)
class Listed:
    """A file a record lists: its name (relative to the run folder), label, sha256, size."""

    name: str
    label: str
    sha256: str
    size: int | None


def listed(data: dict[str, Any]) -> list[Listed]:
    """The ONNX files a record (its JSON) lists with a sha256, each once; names that are not a
    plain ``NAME.onnx`` in the run folder are left out (a record never writes others)."""
    out: dict[str, Listed] = {}

    def add(name: Any, label: str, sha: Any, size: Any) -> None:
        if not isinstance(name, str) or not NAME.match(name) or name in out:
            return
        if not isinstance(sha, str) or not SHA256.match(sha):
            return
        out[name] = Listed(name, label, sha, size if isinstance(size, int) else None)

    arts = data.get("artifacts")
    onnx = arts.get("onnx") if isinstance(arts, dict) else None
    for variant, info in (onnx if isinstance(onnx, dict) else {}).items():
        if isinstance(info, dict):
            add(info.get("path"), f"onnx {variant}", info.get("sha256"), info.get("bytes"))
    quant = data.get("quantization")
    qarts = quant.get("artifacts") if isinstance(quant, dict) else None
    for q in qarts if isinstance(qarts, list) else []:
        if isinstance(q, dict) and q.get("status", "ok") == "ok":
            label = f"int8 {q.get('family')} {q.get('variant')}"
            add(q.get("path"), label, q.get("sha256"), q.get("bytes"))
    return list(out.values())


class Files:
    """The artifacts' bytes: ``ROOT/ab/abcdef...`` (the file's sha256)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def receive(self, chunks: AsyncIterator[bytes], limit: int, expected: Listed) -> int:
        """Write a pushed file (its bytes as they arrive) where its sha256 names it; its size.
        :class:`Refused` (413 past ``limit``, 422 not the file the record lists): nothing kept."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise Refused(
                            413, f"{expected.name} is over {limit} bytes, this service's limit"
                        )
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            got = digest.hexdigest()
            if got != expected.sha256:
                raise Refused(
                    422,
                    f"{expected.name} has sha256 {got[:16]}..., the record lists"
                    f" {expected.sha256[:16]}...: not the file the record was measured with",
                )
            final = self.path(got)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)  # (the same bytes already there: replaced by themselves)
            return size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
