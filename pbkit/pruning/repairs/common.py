"""What every repair shares: the torch-pruning release they were written for, the check made when
they are imported, and the error that tells a repair which no longer fits torch-pruning apart from a
model the dependency graph cannot trace.

The repairs patch and read torch-pruning's private internals (``index_mapping``'s functions, a
``Dependency``'s call, a node's ``module`` and ``grad_fn``), which change between its releases
without notice. They were written for :data:`WRITTEN_FOR`:

- the same release: nothing is said;
- another patch release of the same minor (1.6.x): one warning at import, and pruning goes on;
  should a repair then fail on torch-pruning's objects, :class:`RepairBroken` names it;
- another minor or major release: the same warning at import (so that ``pbkit`` commands that do
  not prune still run), and every graph build refuses with a :class:`PbkitError`
  (:func:`require_fit`) that asks for the release the repairs were written for.

A repair's own reads and patches of torch-pruning run inside :func:`fits`: an ``AttributeError``,
``TypeError`` or ``ImportError`` there (a renamed private function, a changed signature, a moved
module) becomes :class:`RepairBroken`, a :class:`PbkitError` whose one line names the repair, the
torch-pruning found and the one written for. What torch-pruning's own functions raise, called by a
repair or by torch-pruning, passes through as it is: that is the model's failure, which the prune
loop reports as "the dependency graph could not trace this model".
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from collections.abc import Iterator

from pbkit.core.errors import PbkitError, first_line

WRITTEN_FOR = "1.6.1"  # the torch-pruning release every repair was written and tested against
FITS = (AttributeError, TypeError, ImportError)  # what a changed internal raises in a repair


def installed() -> str:
    """The torch-pruning release installed (``"none"`` when it is not)."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return "none"


FOUND = installed()


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def mismatch(found: str) -> str | None:
    """What to say of torch-pruning ``found``: None for the release the repairs were written for."""
    if found == WRITTEN_FOR:
        return None
    verdict = (
        "they may not fit it (a repair that fails says which)"
        if _minor(found) == _minor(WRITTEN_FOR)
        else "pbkit refuses to prune with it"
    )
    return (
        f"pbkit's repairs to torch-pruning were written for {WRITTEN_FOR} and torch-pruning {found}"
        f" is installed: {verdict}; install torch-pruning=={WRITTEN_FOR}"
    )


def warn_at_import(found: str) -> None:
    """One warning where torch-pruning ``found`` is not the release the repairs were written for
    (run once, when this module is imported)."""
    said = mismatch(found)
    if said is not None:
        warnings.warn(said, RuntimeWarning, stacklevel=2)


def require_fit() -> None:
    """Refuse to build a dependency graph with another minor release of torch-pruning than the
    repairs were written for (a :class:`PbkitError`, one line)."""
    if _minor(FOUND) != _minor(WRITTEN_FOR):
        raise PbkitError(str(mismatch(FOUND)))


class RepairBroken(PbkitError):
    """A repair failed on torch-pruning's own objects: it no longer fits the installed release."""

    def __init__(self, repair: str, error: BaseException) -> None:
        self.repair = repair
        super().__init__(
            f"pbkit's repair {repair!r} no longer fits torch-pruning {FOUND} (written for"
            f" {WRITTEN_FOR}): {first_line(error)}; install torch-pruning=={WRITTEN_FOR}"
            " or update pbkit/pruning/repairs"
        )


@contextlib.contextmanager
def fits(repair: str) -> Iterator[None]:
    """Within: an ``AttributeError``, ``TypeError`` or ``ImportError`` is the repair ``repair`` no
    longer fitting torch-pruning (:class:`RepairBroken`). Wrap only a repair's own reads and patches
    of torch-pruning, never a call into torch-pruning's functions."""
    try:
        yield
    except RepairBroken:
        raise
    except FITS as e:
        raise RepairBroken(repair, e) from e


warn_at_import(FOUND)
