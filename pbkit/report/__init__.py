"""Reports, from records only: the per-run table, leaderboards (table, markdown, CSV, JSON), plots,
and comparisons across machines.

A leaderboard is made in typed steps (:mod:`.leaderboard` is their public face):
:mod:`.discover` (which records), :mod:`.rows` (a row per record), :mod:`.stats` (seeds
aggregated, what ranks a row), :mod:`.rank` (groups by comparison setup, :mod:`.setups`, and
ranks), :mod:`.recipes` (across finetuning recipes) and :mod:`.render` (tables, markdown, CSV,
JSON), with :mod:`.columns` shared by every renderer; :mod:`.html`, :mod:`.plots`,
:mod:`.machines` and :mod:`.tables` (the per-run table) render the rest. Nothing here imports
:mod:`pbkit.measure`: reports read what records hold."""
