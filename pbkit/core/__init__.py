"""What every layer uses: errors, atomic files, locks, console output, the config and record
schemas, and the process-state scopes (:mod:`pbkit.core.runtime`)."""
