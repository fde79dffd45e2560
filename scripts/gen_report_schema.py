"""Write the published JSON schema of report.json (and the Job's summary) from the engine's report models.

    python scripts/gen_report_schema.py           # (re)write jobs/src/kompress/jobs/schemas/report.schema.json
    python scripts/gen_report_schema.py --check   # exit 1 when the committed copy differs from the models

The same text is printed by `kompress schema report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "jobs" / "src" / "kompress" / "jobs" / "schemas" / "report.schema.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)
    from kompress.jobs.report.model import json_schema_text

    text = json_schema_text()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
    rel = TARGET.relative_to(ROOT)
    if current == text:
        print(f"{rel}: up to date")
        return 0
    if args.check:
        print(f"{rel}: out of date; run python scripts/gen_report_schema.py", file=sys.stderr)
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"{rel}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
