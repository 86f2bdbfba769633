"""The stages of a run and the thin orchestrator that runs them in order, resumably:
prune (:mod:`.prune`), finetune (:mod:`.finetune`), export (:mod:`.export`), bench (:mod:`.bench`);
run folders, identity and locks in :mod:`.rundir`; the dense base in :mod:`.bases`."""

from pbkit.stages.orchestrate import Outcome, bench_run, export_run, run
from pbkit.stages.rundir import parity_failures

__all__ = ["Outcome", "bench_run", "export_run", "parity_failures", "run"]
