"""The `cpp-dagster` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from cpp_dagster.demo.run import run_demo

    result = run_demo(
        wells=args.wells,
        sites=args.sites,
        batch_size=args.batch_size,
        seed=args.seed,
        timeout_s=args.timeout,
        echo=_echo,
    )
    print(json.dumps(result), flush=True)
    return 0 if result["db"]["finish"] and not result["db"]["error"] else 1


def cmd_dev(args: argparse.Namespace) -> int:
    from cpp_dagster.local import environment as local_env
    from cpp_dagster.local import ui
    from cpp_dagster.settings import PROJECT_ROOT

    env = {**os.environ, **local_env.environment()}
    apply_schemas()
    local_env.pin_pool_limits(env)
    return ui.run_dev(
        PROJECT_ROOT / "workspace.yaml", args.host, args.port, env, open_browser=not args.no_browser, echo=_echo
    )


def cmd_merge(args: argparse.Namespace) -> int:
    """Any error is one readable line on stderr and exit code 2 (never a traceback): the
    merge's own errors name the batch and file; anything else is reported by its type."""
    from cpp_dagster.features.merge import merge_batches

    src = Path(args.src)
    try:
        if not src.is_dir():
            raise NotADirectoryError(f"{src} is not a folder of batch folders")
        batch_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        result = merge_batches(batch_dirs, Path(args.dest))
    except Exception as e:  # noqa: BLE001  (the command's contract: one line, exit 2)
        message = " ".join(str(e).split()) or type(e).__name__
        _echo(f"cpp-dagster merge: {message}")
        return 2
    print(
        json.dumps(
            {
                name: {"path": str(t.path), "rows": t.rows, "columns": t.columns, "drift": list(t.drift)}
                for name, t in result.tables.items()
            }
        )
    )
    return 0


def _imagedb():
    """imagedb at CPP_IMAGEDB_URL, else an existing local deployment's (never a new one)."""
    from cpp_dagster.imagedb.store import ImageDB
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.settings import load_settings

    return ImageDB(cli_url(load_settings(), "imagedb"))


def cmd_submit(args: argparse.Namespace) -> int:
    submitted = _imagedb().submit_analysis(
        args.plate_acquisition,
        args.pipeline,
        priority=args.priority,
        overrides={"well_filter": args.wells or None, "site_filter": args.sites or None, "cp_version": args.cp_version},
    )  # unset: the pipeline's own
    print(json.dumps({"analysis_id": submitted.analysis_id, "sub_analysis_ids": submitted.sub_ids}))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    generation = _imagedb().rerun_sub_analysis(args.sub_id)
    _echo(
        f"sub-analysis {args.sub_id} re-submitted (re-run {generation}); the sensor launches it, "
        "reusing the outputs of batches that finished before"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The lab overview; an unknown barcode or a bad URL template is one line, exit 2."""
    from cpp_dagster.analysis import lab_overview
    from cpp_dagster.imagedb.rows import ImageDBError
    from cpp_dagster.imagedb.store import ImageDB
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.settings import load_settings

    settings = load_settings()
    rows = ImageDB(cli_url(settings, "imagedb")).lab_overview(plate_barcode=args.plate, all_analyses=args.all)
    if not rows and args.plate is not None:
        raise ImageDBError(f"no plate acquisition with barcode {args.plate!r}")
    lines = lab_overview.overview_lines(rows, url_template=settings.results_url_template, nas_root=settings.nas_root)
    if args.json:
        print(json.dumps(lab_overview.as_dicts(lines)))
    else:
        print(lab_overview.text_table(lines) if lines else "no plate acquisitions registered")
    return 0


def cmd_provenance(args: argparse.Namespace) -> int:
    """How each sub-analysis of a results folder was made, and whether its tables are still
    the ones published: exit 0 when all match, 1 on a changed or missing table, 2 when
    there is no readable provenance (one line why)."""
    from cpp_dagster import paths
    from cpp_dagster.features import provenance, results_folder

    try:
        version = results_folder.current_version(Path(args.result_folder))
        if version is None:
            raise paths.UnsafePathError(f"{args.result_folder} is not a results folder")
        checks = provenance.verify(version)
    except (paths.UnsafePathError, OSError) as e:
        _echo(f"cpp-dagster provenance: {' '.join(str(e).split())}")
        return 2
    for check in checks:
        print("\n".join(provenance.summary_lines(check)))
    if not checks:
        _echo(f"cpp-dagster provenance: {args.result_folder} has a provenance folder with no sub-analysis in it")
        return 2
    return 1 if any(c.mismatched or c.missing for c in checks) else 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Clean the work area (`work_area.py`); prints what it freed per sub-analysis. A bad
    CPP_WORK_RETENTION_DAYS or --retention-days is one line, exit 2."""
    from cpp_dagster.analysis import work_area, work_leftovers
    from cpp_dagster.imagedb.store import ImageDB
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.settings import load_settings

    try:
        settings = load_settings()
        days = settings.work_retention_days if args.retention_days is None else args.retention_days
        if days < 0:
            raise ValueError(f"--retention-days must be >= 0, got {days:g}")
    except ValueError as e:
        _echo(f"cpp-dagster gc: {e}")
        return 2
    outcomes = work_area.collect(
        ImageDB(cli_url(settings, "imagedb")),
        settings.work_root,
        settings.nas_root,
        days,
        dry_run=args.dry_run,
        expire_failed=args.expire_failed,
    )
    print("\n".join(work_area.report_lines(outcomes, dry_run=args.dry_run)), flush=True)
    leftovers = work_leftovers.collect_leftovers(
        settings.work_root, settings.pipeline_check_cache, days, _active_work(), dry_run=args.dry_run
    )
    print("\n".join(work_leftovers.report_lines(leftovers, dry_run=args.dry_run)), flush=True)
    return 0


def _active_work():
    """The runs Dagster has not ended, from the instance DAGSTER_HOME names; None (and a
    line saying so) without one: then runs' leftovers are left to the nightly job."""
    if not os.environ.get("DAGSTER_HOME"):
        _echo("cpp-dagster gc: DAGSTER_HOME is not set: runs' compute logs, pickles and training folders are kept")
        return None
    import dagster as dg

    from cpp_dagster.defs.analysis.work_area import active_work

    try:
        with dg.DagsterInstance.get() as instance:
            return active_work(instance)
    except Exception as e:  # a broken dagster.yaml or an unreachable database: keep, and say why
        _echo(
            f"cpp-dagster gc: the Dagster instance of DAGSTER_HOME could not be read ({type(e).__name__}: {e}); "
            "runs' compute logs, pickles and training folders are kept"
        )
        return None


def apply_schemas() -> list[str]:
    """The schemas of imagedb and the training configuration store (idempotent); returns
    where each was applied (passwords redacted). The training store is included when
    CPP_TRAINING_DB_URL is set or the deployment is the local one (no CPP_IMAGEDB_URL)."""
    from cpp_dagster.imagedb.store import ImageDB
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.setting_rules import redact_url
    from cpp_dagster.settings import load_settings
    from cpp_dagster.training.store import ConfigStore

    settings = load_settings()
    stores = [("imagedb", ImageDB(cli_url(settings, "imagedb")))]
    if settings.training.db_url or not settings.imagedb_url:
        stores.append(("training configuration store", ConfigStore(cli_url(settings, "training"))))
    for _, store in stores:
        store.apply_schema()
    return [f"{name} schema applied at {redact_url(store.url)}" for name, store in stores]


def cmd_db_init(args: argparse.Namespace) -> int:
    for line in apply_schemas():
        _echo(line)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """The settings in effect (secrets redacted), or with --markdown the README's table."""
    from cpp_dagster import settings

    lines = [settings.settings_table()] if args.markdown else settings.current_values(settings.load_settings())
    print("\n".join(lines))
    return 0


def cmd_local_env(args: argparse.Namespace) -> int:
    """`eval "$(cpp-dagster local env)"`: each value quoted for the shell (shlex.quote), so
    a quote or `$(...)` in a URL stays part of the value."""
    import shlex

    from cpp_dagster.local import environment as local_env

    for key, value in local_env.environment().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_local_stop(args: argparse.Namespace) -> int:
    from cpp_dagster.local import postgres as local_postgres

    _echo("embedded PostgreSQL stopped" if local_postgres.stop() else "embedded PostgreSQL was not running")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpp-dagster", description="Continuous Cell Painting analysis on Dagster")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="register a synthetic plate, let the sensor run it, print the outcome as JSON")
    demo.add_argument("--wells", type=int, default=4)
    demo.add_argument("--sites", type=int, default=4)
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the outcome")
    demo.set_defaults(fn=cmd_demo)

    dev = sub.add_parser(
        "dev", help="Dagster UI (webserver + daemon) over the local instance; prints (and opens) the asset graph's URL"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--no-browser", action="store_true", help="only print the URL of the asset graph")
    dev.set_defaults(fn=cmd_dev)

    merge = sub.add_parser("merge", help="merge per-batch CellProfiler CSV folders into Parquet feature tables")
    merge.add_argument("src", help="folder with one sub-folder per batch")
    merge.add_argument("dest", help="destination folder for the Parquet files")
    merge.set_defaults(fn=cmd_merge)

    submit = sub.add_parser("submit", help="submit an analysis pipeline for a plate acquisition")
    submit.add_argument("--plate-acquisition", type=int, required=True)
    submit.add_argument("--pipeline", required=True)
    submit.add_argument("--wells", nargs="+", help="only these wells, e.g. B02 B03")
    submit.add_argument("--sites", nargs="+", type=int, help="only these sites")
    submit.add_argument("--cp-version", help="CellProfiler version (container image) to run it with")
    submit.add_argument("--priority", type=int, help="1 (high) to 9 (low)")
    submit.set_defaults(fn=cmd_submit)

    rerun = sub.add_parser("rerun", help="re-run a failed sub-analysis (only its failed batches run again)")
    rerun.add_argument("sub_id", type=int)
    rerun.set_defaults(fn=cmd_rerun)

    status = sub.add_parser(
        "status",
        help="the lab overview: each sub-analysis's state, why it waits, its progress, failure or result folder",
    )
    status.add_argument("--plate", metavar="BARCODE", help="only this plate barcode")
    status.add_argument(
        "--all", action="store_true", help="every analysis, not only the latest per plate acquisition and pipeline"
    )
    status.add_argument("--json", action="store_true", help="a JSON list of rows, for scripts")
    status.set_defaults(fn=cmd_status)

    prov = sub.add_parser(
        "provenance",
        help="how a result was made (pipeline, CellProfiler, runs, batches) and a check of its tables' "
        "sha256; exit 1 when a table changed",
    )
    prov.add_argument("result_folder", metavar="RESULT_FOLDER", help="results/<barcode>/<acquisition>/<analysis>")
    prov.set_defaults(fn=cmd_provenance)

    gc = sub.add_parser(
        "gc",
        help="remove the work area (batch CSVs and Parquet) of sub-analyses that finished "
        "longer ago than the retention; prints what it freed",
    )
    gc.add_argument("--dry-run", action="store_true", help="remove nothing, print what would be freed")
    gc.add_argument(
        "--retention-days",
        type=float,
        metavar="N",
        help="keep work areas of sub-analyses that finished less than N days ago "
        "(default: CPP_WORK_RETENTION_DAYS, else 7)",
    )
    gc.add_argument(
        "--expire-failed",
        action="store_true",
        help="also remove failed sub-analyses' work areas once the retention has run out since "
        "their failure (by default a failed one is kept for its re-run)",
    )
    gc.set_defaults(fn=cmd_gc)

    db = sub.add_parser("db", help="imagedb administration").add_subparsers(dest="db_command", required=True)
    db.add_parser("init", help="create the tables of imagedb and the training store (idempotent)").set_defaults(
        fn=cmd_db_init
    )

    settings = sub.add_parser("settings", help="every CPP_* setting in effect (checked; secrets redacted)")
    settings.add_argument(
        "--markdown", action="store_true", help="the table of every setting, its meaning and default (the README's)"
    )
    settings.set_defaults(fn=cmd_settings)

    from cpp_dagster.pipeline_cli import add_parser as add_pipeline_parser
    from cpp_dagster.train_cli import add_parser as add_train_parser

    add_pipeline_parser(sub)
    add_train_parser(sub)

    loc = sub.add_parser("local", help="the embedded local deployment").add_subparsers(
        dest="local_command", required=True
    )
    loc.add_parser("env", help="print the environment of the local deployment").set_defaults(fn=cmd_local_env)
    loc.add_parser("stop", help="stop the embedded PostgreSQL").set_defaults(fn=cmd_local_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    """A refusal (bad settings, an imagedb error) is a line per problem and exit code 2."""
    from cpp_dagster.imagedb.rows import ImageDBError
    from cpp_dagster.setting_rules import SettingsError

    args = parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except (ImageDBError, SettingsError) as e:
        for line in str(e).splitlines():
            _echo(f"cpp-dagster {args.command}: {line}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
