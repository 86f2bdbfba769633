"""Make tensorrt-stubs parse. Its generated stubs have two kinds of syntax errors:
- parameters named ``in`` (a keyword): ``def configure_plugin(self, in: list[...], ...)`` -> ``in_``;
- a parameter without a default after ones with defaults (``add_scale_nd(..., power: Weights =
  None, channel_axis: int)``) -> that parameter gets ``= ...``.
Fixed in place, idempotent. Usage: python requirements/fix_stubs.py .venv/stubs
"""

import re
import sys
from pathlib import Path

KEYWORD_PARAM = re.compile(r"([(,]\s*)in(\s*:)")
DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:\s*)$")


def split_params(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur] if cur.strip() else out


def fix_defaults(line: str) -> str:
    m = DEF.match(line)
    if not m:
        return line
    params, seen_default = split_params(m.group(2)), False
    for i, p in enumerate(params):
        name = p.strip()
        if name.startswith("*"):
            break  # keyword-only parameters may follow defaults
        if "=" in name:
            seen_default = True
        elif seen_default and name:
            params[i] = p + " = ..."
    return m.group(1) + ",".join(params) + m.group(3)


for path in Path(sys.argv[1]).rglob("*.pyi"):
    text = path.read_text(encoding="utf-8")
    fixed = "\n".join(fix_defaults(line) for line in KEYWORD_PARAM.sub(r"\1in_\2", text).split("\n"))
    if fixed != text:
        path.write_text(fixed, encoding="utf-8")
