"""Reports, from records only: the per-run table, leaderboards (table, markdown, CSV, JSON), plots,
and comparisons across machines."""
