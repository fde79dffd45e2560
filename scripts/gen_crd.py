"""Write the ModelOptimization CRD generated from the pydantic spec (kompress.operator.crd).

    python scripts/gen_crd.py           # (re)write both copies
    python scripts/gen_crd.py --check   # exit 1 when a committed copy differs from the generator

Two identical copies: crds/ for `kubectl apply -f crds/`, and the Helm chart's crds/ (Helm installs
those before the templates and never templates them).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILENAME = "modeloptimizations.kompress.dev.yaml"
TARGETS = [ROOT / "crds" / FILENAME, ROOT / "charts" / "kompress" / "crds" / FILENAME]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)

    from kompress.operator.crd import crd_yaml

    text = crd_yaml()
    drift = 0
    for path in TARGETS:
        rel = path.relative_to(ROOT)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            print(f"{rel}: up to date")
            continue
        if args.check:
            drift += 1
            print(f"{rel}: {'missing' if current is None else 'out of date'}; run python scripts/gen_crd.py",
                  file=sys.stderr)
            if current is not None:
                diff = difflib.unified_diff(current.splitlines(), text.splitlines(), f"{rel} (committed)",
                                            f"{rel} (generated)", lineterm="", n=2)
                sys.stderr.write("\n".join(list(diff)[:60]) + "\n")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"{rel}: written")
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
