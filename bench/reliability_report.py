"""Print the reliability records (``var/reliability/*.json``) as the table of docs/reliability.md.

Run by ``make reliability`` after the suites; ``--records DIR`` reads another folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _value(v: object) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _figures(figures: dict) -> str:
    # Per-case outcomes are in the JSON record; the table keeps the counts.
    return "; ".join(f"{k.replace('_', ' ')} {_value(v)}" for k, v in figures.items()
                     if k != "per_case")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", default="var/reliability", type=Path)
    args = parser.parse_args()
    entries = [json.loads(p.read_text()) for p in sorted(args.records.glob("*.json"))]
    if not entries:
        print(f"no records in {args.records}: run `make reliability` first")
        return 1
    print(f"Machine: {entries[0]['machine']}\n")
    print("| scenario | how it is run | profile | figures of the last run | finished |")
    print("|---|---|---|---|---|")
    for e in entries:
        print(f"| {e['scenario']} | {e['how']} | {e['profile']} | {_figures(e['figures'])} "
              f"| {e['finished']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
