"""A lab's worth of imagedb rows, written in a few statements (server-side
generate_series), for the tests and benchmarks of what must stay bounded at lab scale.

`fill_lab(url, acquisitions)`: that many plate acquisitions `SCALE-00001`...,
every 25th still being imaged; one analysis of `pipeline` each (unless
`analyses=False`), with 3 sub-analyses
(illumination, QC, features); of the sub-analyses about 70 % finished, 10 % waiting,
10 % running and 10 % failed, each failed one with a message of its own.
"""

from __future__ import annotations

import psycopg2

STEPS = ("illum", "qc", "features")

_PLATES = """
INSERT INTO plate_acquisition (plate_barcode, finished)
SELECT 'SCALE-' || lpad(g::text, 5, '0'), CASE WHEN g %% 25 = 0 THEN NULL ELSE now() END
FROM generate_series(1, %(n)s) g;
"""

_ANALYSES = """
INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, start, meta)
SELECT id, %(pipeline)s, now(), '{}'::jsonb FROM plate_acquisition ORDER BY id;

INSERT INTO image_sub_analyses (analysis_id, plate_acquisition_id, start, finish, error, meta, status, result)
SELECT a.id, a.plate_acquisition_id,
       CASE WHEN k.v < 70 OR k.v >= 80 THEN now() END,
       CASE WHEN k.v < 70 THEN now() END,
       CASE WHEN k.v >= 90 THEN now() END,
       jsonb_build_object('sub_type', (%(steps)s::text[])[step]),
       CASE WHEN k.v >= 90 THEN jsonb_build_object('message',
                'step features_step.run_cellprofiler[batch_' || lpad(a.id::text, 4, '0') || '] failed: exit code 1')
            WHEN k.v >= 80 THEN jsonb_build_object('message', '3 / 8 batches finished, ~1 h left') END,
       CASE WHEN k.v < 70 THEN jsonb_build_object('job_folder', 'results/SCALE/' || a.id || '/' || step) END
FROM image_analyses a
CROSS JOIN generate_series(1, 3) step
CROSS JOIN LATERAL (SELECT (a.id * 7 + step * 13) %% 100 AS v) k
ORDER BY a.id, step;
"""


def fill_lab(url: str, acquisitions: int, pipeline: str = "scale-pipeline", *, analyses: bool = True) -> None:
    """`analyses=False`: only the plate acquisitions (a lab's plates before a first deployment)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_PLATES, {"n": acquisitions})
            if analyses:
                cur.execute(_ANALYSES, {"pipeline": pipeline, "steps": list(STEPS)})
    finally:
        conn.close()


def run_sql(url: str, statement: str, params: tuple | dict = ()) -> None:
    """A change made the way another lab tool or a script would: plain SQL."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()
