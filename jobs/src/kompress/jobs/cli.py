"""`kompress` command line: run and validate ModelOptimization specs.

Exit codes: 0 success, 2 invalid input, 3 gates rejected, 4 runtime failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from kompress.jobs.errors import ExitCode, InvalidInputError, KompressError, SpecError

DEFAULT_SPEC = "minilm-int8.yaml"


def _default_spec_path() -> Path:
    return Path(str(resources.files("kompress.jobs") / "examples" / DEFAULT_SPEC))


def _load(spec_arg: str | None, spec_env: str | None = None):  # type: ignore[no-untyped-def]
    from kompress.jobs.spec.document import load_spec_file, load_spec_text

    if spec_env:
        text = os.environ.get(spec_env)
        if text is None:
            raise InvalidInputError(f"--spec-env: environment variable {spec_env} is not set")
        return load_spec_text(text, f"from ${spec_env}")
    return load_spec_file(spec_arg or _default_spec_path())


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.spec)
    except SpecError as err:
        print(f"{args.spec}: {len(err.problems)} problem(s)", file=sys.stderr)
        for path, message in err.problems:
            print(f"  {path or '<root>'}: {message}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except KompressError as err:
        print(f"kompress: {err}", file=sys.stderr)
        return err.exit_code
    search = loaded.spec.search
    if search is not None:
        what = (f"search over {len(search.candidates)} candidate(s)" if search.candidates
                else "search over the built-in candidates") + f", objective {search.objective}"
    else:
        what = ", ".join(name for name, _ in loaded.spec.steps())
    print(f"{args.spec}: valid ModelOptimization {loaded.name!r} ({what})")
    return ExitCode.SUCCESS


class _DropLibraryAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs generic advice on the root logger; kompress already does what it asks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Please consider to run pre-processing",
                                                   "Please consider pre-processing"))


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropLibraryAdvice())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        loaded = _load(args.spec, args.spec_env)
    except SpecError as err:
        for path, message in err.problems:
            print(f"kompress: invalid spec: {path or '<root>'}: {message}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except KompressError as err:
        print(f"kompress: {err}", file=sys.stderr)
        return err.exit_code
    from kompress.jobs import runner
    from kompress.jobs.report import render as report

    if args.name:
        loaded = loaded.model_copy(update={"name": args.name})

    output_uri = args.output if args.output and args.output.startswith("s3://") else None
    output_dir = Path(args.output) if args.output and not output_uri else Path("kompress-out") / loaded.name
    if output_uri:
        output_dir = Path(args.workdir or "kompress-out") / loaded.name
    try:
        result = runner.run(loaded, output_dir, output_uri=output_uri, approve=args.approve, quiet=args.quiet,
                            resource_uid=args.resource_uid, promote=not args.no_promote)
    except KompressError as err:  # e.g. the report upload failed
        print(f"kompress: {err}", file=sys.stderr)
        return err.exit_code
    if args.termination_log:
        Path(args.termination_log).write_text(report.summary(result.report))
    gateway = args.pushgateway or os.environ.get("KOMPRESS_PUSHGATEWAY_URL")
    if gateway and result.report.optimized:
        from kompress.jobs.report import metrics

        try:
            metrics.push(gateway, args.namespace, loaded.name, result.report)
        except OSError as err:  # metrics are a side channel: the run's result stands
            print(f"kompress: warning: pushing metrics to {gateway} failed: {err}", file=sys.stderr)
    print(report.console_table(result.report))
    print(f"report: {result.report.artifacts.report_html if result.report.artifacts else None}")
    if result.exit_code not in (ExitCode.SUCCESS, ExitCode.GATES_REJECTED):
        print(f"kompress: {result.report.message}", file=sys.stderr)
    return result.exit_code


def cmd_schema(args: argparse.Namespace) -> int:
    from kompress.jobs.report.model import json_schema_text

    sys.stdout.write(json_schema_text())
    return ExitCode.SUCCESS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kompress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="optimize a model as a ModelOptimization spec says")
    run.add_argument("spec", nargs="?", help="spec YAML (default: the embedded MiniLM INT8 example)")
    run.add_argument("-o", "--output", help="output folder or s3:// prefix (default: kompress-out/<name>)")
    run.add_argument("--workdir", help="local folder for outputs when --output is an s3:// prefix")
    run.add_argument("--spec-env", metavar="VAR", help="read the spec (YAML or JSON) from this environment variable")
    run.add_argument("--approve", action="store_true", help="approve promotion for policy: manual")
    run.add_argument("--no-promote", action="store_true", help="evaluate and report only (the operator promotes)")
    run.add_argument("--resource-uid", help="uid of the Kubernetes resource (set by the operator)")
    run.add_argument("--termination-log", help="write the JSON summary here (a Job's termination message)")
    run.add_argument("--pushgateway", metavar="URL",
                     help="push result metrics to this Prometheus Pushgateway (or $KOMPRESS_PUSHGATEWAY_URL)")
    run.add_argument("--namespace", default="local", help="namespace label of pushed metrics (default: local)")
    run.add_argument("--name", help="run name (default: metadata.name, else the spec file's name)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=cmd_run)
    schema = sub.add_parser("schema", help="print the JSON schema of report.json (the engine/operator contract)")
    schema.add_argument("what", choices=["report"])
    schema.set_defaults(func=cmd_schema)
    val = sub.add_parser("validate", help="check a spec and list every problem with its field path")
    val.add_argument("spec")
    val.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
