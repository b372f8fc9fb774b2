"""`cpp-dagster pipeline ...`: register analysis pipelines (each registration a version of
its own, its files in the content-addressed store), list and show them, check pipeline
files. The work is in cpp_dagster.analysis.pipeline_registry."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

USAGE_EPILOG = """\
one step:   cpp-dagster pipeline add NAME FILE [KEY=VALUE ...]
steps:      cpp-dagster pipeline add NAME --step ILLUM.cppipe sub_type=icf batch_size=0 \\
                                          --step ANALYSIS.cppipe use_icf=true
options of a step (as in a sub-analysis's meta): sub_type (icf, qc, features), batch_size,
cp_version, channels (e.g. DNA,ER), z, use_icf, icf_naming (pharmbio, broad), job_timeout,
priority, well_filter, site_filter"""


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _settings_and_imagedb(with_imagedb: bool = True):
    """The settings, and imagedb at CPP_IMAGEDB_URL, else an existing local deployment's
    (never a new one; none without `with_imagedb`)."""
    from cpp_dagster.imagedb.store import ImageDB
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.settings import load_settings

    settings = load_settings()
    return settings, ImageDB(cli_url(settings, "imagedb")) if with_imagedb else None


def _refusals() -> tuple[type[Exception], ...]:
    """What a command reports as one line (exit 2): a value, a file, a pipeline that
    cannot be registered or checked, a CellProfiler that cannot inspect it."""
    from cpp_dagster.analysis.cellprofiler import CellProfilerError
    from cpp_dagster.analysis.pipeline_steps import PipelineStepError
    from cpp_dagster.analysis.pipeline_store import PipelineFileError
    from cpp_dagster.analysis.planning import PlanningError
    from cpp_dagster.paths import UnsafePathError

    return (PipelineStepError, PipelineFileError, PlanningError, UnsafePathError, CellProfilerError)


def step_specs(args: argparse.Namespace) -> list:
    from cpp_dagster.analysis.pipeline_registry import StepSpec
    from cpp_dagster.analysis.pipeline_steps import PipelineStepError

    if args.file and args.step:
        raise PipelineStepError(
            "give FILE [KEY=VALUE ...] for a pipeline of one step, or --step for each step; not both"
        )
    if args.file:
        return [StepSpec(args.file, tuple(args.options))]
    if args.options:
        raise PipelineStepError(f"{args.options[0]!r} is given without a FILE")
    if not args.step:
        raise PipelineStepError("give the pipeline's FILE, or --step FILE [KEY=VALUE ...] for each of its steps")
    return [StepSpec(step[0], tuple(step[1:])) for step in args.step]


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container without a user name
        return None


def cmd_add(args: argparse.Namespace) -> int:
    from cpp_dagster.analysis.pipeline_listing import needs_text, shown
    from cpp_dagster.analysis.pipeline_registry import add_pipeline

    try:
        steps = step_specs(args)
        settings, db = _settings_and_imagedb()
        added = add_pipeline(
            db,
            settings,
            args.name,
            steps,
            description_text=args.description,
            channel_map_id=args.channel_map,
            added_by=args.added_by or _user(),
        )
    except _refusals() as e:
        _echo(f"cpp-dagster pipeline add: {' '.join(str(e).split())}")
        return 2
    print(
        json.dumps(
            {"pipeline": added.name, "version": added.version, "new_version": added.created, "steps": added.steps}
        )
    )
    for step in added.steps:
        compared = step["compared_with"]
        _echo(
            f"{shown(step['source'])} ({step['pipeline_file']}): needs {needs_text(step['needs'])}"
            + (
                f"; compared with {compared}"
                if compared
                else "; images not compared with a channel map (--channel-map ID)"
            )
        )
    _echo(
        f"{added.name} version {added.version} registered: new submissions run it"
        if added.created
        else f"{added.name} version {added.version} already has this content: nothing registered"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cpp_dagster.analysis import pipeline_listing

    _, db = _settings_and_imagedb()
    pipelines = db.registered_pipelines()
    print(json.dumps(pipeline_listing.as_dicts(pipelines)) if args.json else pipeline_listing.list_text(pipelines))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cpp_dagster.analysis import pipeline_listing
    from cpp_dagster.imagedb.rows import ImageDBError

    _, db = _settings_and_imagedb()
    found = db.registered_pipelines(args.name)
    if not found:
        raise ImageDBError(f"no analysis pipeline named {pipeline_listing.shown(repr(args.name), 120)}")
    print(json.dumps(pipeline_listing.as_dicts(found)[0]) if args.json else pipeline_listing.show_text(found[0]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when every file can run, 1 when one cannot (or cannot be read), 2 on a bad option."""
    from cpp_dagster.analysis.pipeline_listing import needs_text, shown
    from cpp_dagster.analysis.pipeline_registry import check_file
    from cpp_dagster.analysis.pipeline_steps import FEEDING_STAGES, step_options

    try:
        options = step_options(args.option or [], "--option")
        settings, db = _settings_and_imagedb(with_imagedb=args.channel_map is not None)
    except _refusals() as e:
        _echo(f"cpp-dagster pipeline check: {' '.join(str(e).split())}")
        return 2
    failed = False
    for path in args.files:
        named = shown(path, 300)
        try:
            found = check_file(
                db,
                settings,
                path,
                args.option or [],
                channel_map_id=args.channel_map,
                feeds_others=options.get("sub_type") in FEEDING_STAGES,
            )
        except _refusals() as e:
            print(f"{named}: cannot be checked: {' '.join(str(e).split())}")
            failed = True
            continue
        compared = f"; compared with {found.compared}" if found.compared else ""
        if found.problems:
            failed = True
            print(f"{named}: cannot run: " + " | ".join(found.problems))
        else:
            print(f"{named}: can run (sha256 {found.sha256}); needs {needs_text(found.needs)}{compared}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    pipeline = sub.add_parser(
        "pipeline",
        help="analysis pipelines: add (a checked version), list, show, check pipeline files",
    )
    cmds = pipeline.add_subparsers(dest="pipeline_command", required=True)
    add = cmds.add_parser(
        "add",
        help="check a pipeline with CellProfiler and register it as a new version (its files kept by content)",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("name", metavar="NAME", help="the pipeline's name (a new version when it exists)")
    add.add_argument("file", metavar="FILE", nargs="?", help="the .cppipe of a pipeline of one step")
    add.add_argument("options", metavar="KEY=VALUE", nargs="*", help="that step's options")
    add.add_argument(
        "--step",
        nargs="+",
        action="append",
        metavar=("FILE", "KEY=VALUE"),
        help="one step (repeat, in the order they run): its .cppipe and options",
    )
    add.add_argument("--description", help="what the pipeline does (analysis_meta.description)")
    add.add_argument(
        "--channel-map",
        type=int,
        metavar="ID",
        help="compare the images each step needs with this imagedb channel map (as planning a plate of it would)",
    )
    add.add_argument("--added-by", help="who adds it (default: the current user)")
    add.set_defaults(fn=cmd_add)

    ls = cmds.add_parser("list", help="every pipeline: its current version and what each step needs")
    ls.add_argument("--json", action="store_true", help="every version of every pipeline, as JSON")
    ls.set_defaults(fn=cmd_list)

    show = cmds.add_parser("show", help="one pipeline's versions: files (sha256), options, needs")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true")
    show.set_defaults(fn=cmd_show)

    check = cmds.add_parser(
        "check", help="check .cppipe files with CellProfiler as planning would (exit 1 when one cannot run)"
    )
    check.add_argument("files", metavar="FILE", nargs="+")
    check.add_argument("--channel-map", type=int, metavar="ID", help="compare the images with this channel map")
    check.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help="a step option (use_icf=true, sub_type=icf, ...)"
    )
    check.set_defaults(fn=cmd_check)
