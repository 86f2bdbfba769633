"""The bench stage in a fresh interpreter (``python -m pbkit.stages.fresh JOB ANSWER``), started by
:func:`pbkit.stages.orchestrate._bench_in_fresh_process`: it measures the run named in ``JOB`` (a
JSON file: run folder, configuration, quiet) and writes nothing to ``ANSWER``, or the one-line
reason it failed."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(job: str, answer: str) -> int:
    message = ""
    try:
        from pbkit.core import config, record
        from pbkit.core.errors import PbkitError, first_line
        from pbkit.core.runtime import isolated
        from pbkit.stages import bench
        from pbkit.stages.context import Context

        data = json.loads(Path(job).read_text(encoding="utf-8"))
        folder = Path(data["run_dir"])
        try:
            with isolated():
                cfg = config.validate(data["config"], "bench config")
                bench.run(Context(folder, cfg, bool(data["quiet"])), record.read(folder))
        except PbkitError as e:
            message = str(e)
        except Exception as e:  # the parent turns it into one line
            message = f"bench failed: {first_line(e)}"
    except KeyboardInterrupt:
        message = "interrupted"
    Path(answer).write_text(message, encoding="utf-8")
    return 1 if message else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
