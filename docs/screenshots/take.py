"""Screenshots of the Dagster UI over a small demo lab, with headless Chromium (Debian's
`chromium` package: `apt-get install chromium`).

    .venv/bin/python docs/screenshots/take.py            # docs/screenshots/partitions.png
    .venv/bin/python docs/screenshots/take.py --also-asset-graph /tmp/asset-graph.png

The lab lives in a temporary folder of its own (embedded PostgreSQL, NAS, Dagster home;
your `.cpp/` is not touched): the demo pipelines, three finished plates and one plate
still being imaged. The real webserver and daemon run; the demo pipeline is backfilled
over all four plates through the UI's GraphQL API (the fourth waits: acquisition not
finished), real CellProfiler runs them, then Chromium photographs the partition grid of
`feature_tables`. Everything it started is stopped at the end. About 5 minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the UI harness of the acceptance tests

from webserver import DagsterUI, dagster_ui, write_dagster_home  # noqa: E402

from cpp_dagster.demo.register import DEMO_PIPELINE, install_demo_pipeline, register_plate  # noqa: E402
from cpp_dagster.imagedb.store import ImageDB  # noqa: E402
from cpp_dagster.local import environment as local_env  # noqa: E402
from cpp_dagster.local import postgres as local_postgres
from cpp_dagster.settings import load_settings  # noqa: E402
from cpp_dagster.training.store import ConfigStore  # noqa: E402

PLATES = [("P-0001", True), ("P-0002", True), ("P-0003", True), ("P-0004", False)]
ASSETS = ["feature_tables", "single_cell_table", "well_profiles"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: apt-get install chromium")


def screenshot(url: str, png: Path, size: str = "1400,900", wait_ms: int = 20000) -> None:
    """Chromium loads `url` headless, lets the page's scripts run `wait_ms` of virtual time
    (the UI fetches its data over GraphQL), and writes a PNG."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cpp-chromium-") as profile:
        subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    print(f"{png}: {url}", file=sys.stderr)


def demo_lab(db: ImageDB) -> list[int]:
    """The demo pipelines and four tiny plates (2 wells x 1 site); the last is still being imaged."""
    settings = load_settings()
    install_demo_pipeline(db, settings, batch_size=2)
    return [
        register_plate(db, settings, barcode=barcode, wells=["B02", "C03"], sites=[1], seed=i + 1, finished=finished)
        for i, (barcode, finished) in enumerate(PLATES)
    ]


def backfill_demo(ui: DagsterUI) -> None:
    """The demo pipeline over every plate, as a lab member selects them in the UI."""
    keys = [f"{DEMO_PIPELINE}|{barcode}" for barcode, _ in PLATES]
    ui.wait_until(
        "the sensor to add the plates' partitions", lambda: set(keys) <= set(ui.partition_keys("feature_tables")), 120
    )
    ui.wait_for_backfill(ui.launch_partition_backfill(ASSETS, keys), 1200)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "partitions.png")
    p.add_argument("--also-asset-graph", type=Path, metavar="PNG", help="also the asset graph (what make dev opens)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cpp-screenshots-"))
    work.chmod(0o755)  # as root the embedded server runs as its own user, which must reach it
    os.environ["CPP_LOCAL_DIR"] = str(work)
    for var in (
        "CPP_IMAGEDB_URL",
        "DAGSTER_PG_URL",
        "DAGSTER_HOME",
        "CPP_NAS_ROOT",
        "CPP_WORK_ROOT",
        "CPP_PIPELINES_DIR",
        "CPP_TRAINING_DB_URL",
    ):
        os.environ.pop(var, None)
    try:
        env = local_env.environment()
        os.environ.update({k: v for k, v in env.items() if k != "DAGSTER_HOME"})
        db = ImageDB(env["CPP_IMAGEDB_URL"])
        db.apply_schema()
        ConfigStore(env["CPP_TRAINING_DB_URL"]).apply_schema()
        demo_lab(db)
        home = write_dagster_home(work / "dagster_home_ui")
        with dagster_ui(home, env["DAGSTER_PG_URL"], sensor_interval_s=3) as ui:
            backfill_demo(ui)
            ui.wait_until(
                "the lab overview to show every plate",
                lambda: "P-0004" in str((ui.latest_observation("imagedb/lab_overview") or {}).get("metadata")),
                120,
            )
            screenshot(f"{ui.url}/assets/feature_tables?view=partitions", args.out)
            if args.also_asset_graph:
                screenshot(f"{ui.url}/asset-groups", args.also_asset_graph)
    finally:
        local_postgres.stop(work / "pgdata")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
