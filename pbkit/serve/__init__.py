"""``pbkit serve``: one place for a team's results. A small web service (FastAPI on uvicorn) that
every machine pushes its records to, that shows them as the live HTML report (the same page
``pbkit report --format html`` writes, built from the store's records) and that takes studies to
run on its Ray cluster.

- :mod:`.store`: the SQL store (SQLAlchemy 2: SQLite by default, PostgreSQL for a team): records,
  tokens (hashed), the log of every push and submission, studies and their progress;
- :mod:`.ingest`: a pushed record checked against the record schema before anything is stored;
- :mod:`.auth`: tokens and their roles (read, push, submit);
- :mod:`.page`: the live page from the store's records, and the service's own small pages;
- :mod:`.jobs`: submitted studies: checked (study-file settings only, no user code) and handed
  to Ray's job submission (or a local driver process);
- :mod:`.app`: the HTTP API and the pages; :mod:`.client`: ``pbkit push`` and ``pbkit submit``.

Nothing under :mod:`pbkit.report` imports this package: the service is a top layer, like the CLI.
"""
