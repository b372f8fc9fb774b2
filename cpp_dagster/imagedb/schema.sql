-- imagedb: the tables cpp-dagster reads and writes, with the production names.
-- Idempotent: safe to apply to an existing database (CREATE ... IF NOT EXISTS).

CREATE TABLE IF NOT EXISTS channel_map (
    map_id  integer NOT NULL,
    channel integer NOT NULL,
    dye     text    NOT NULL,
    name    text,
    PRIMARY KEY (map_id, channel)
);

CREATE TABLE IF NOT EXISTS plate_acquisition (
    id             serial PRIMARY KEY,
    plate_barcode  text NOT NULL,
    name           text,
    project        text,
    imaged         timestamp,
    microscope     text,
    channel_map_id integer,
    timepoint      integer,
    folder         text,
    finished       timestamp,
    comment        text
);

CREATE TABLE IF NOT EXISTS images (
    id                   bigserial PRIMARY KEY,
    plate_acquisition_id integer NOT NULL,
    plate_barcode        text,
    timepoint            integer,
    well                 text NOT NULL,
    site                 integer NOT NULL,
    z                    integer,
    channel              integer NOT NULL,
    path                 text NOT NULL,
    metadata             jsonb
);
-- Planning reads all images of one acquisition.
CREATE INDEX IF NOT EXISTS images_plate_acquisition_id_idx ON images (plate_acquisition_id);

CREATE TABLE IF NOT EXISTS analysis_pipelines (
    name text PRIMARY KEY,
    meta jsonb NOT NULL
);

-- Every version of a pipeline (`cpp-dagster pipeline add`); analysis_pipelines.meta is
-- the latest one's meta, which is what a submission copies. `steps`: per sub-analysis
-- its file's sha256, the name it was added from and what CellProfiler found it needs
-- (NULL for a version that was written into analysis_pipelines by other means).
CREATE TABLE IF NOT EXISTS analysis_pipeline_versions (
    name     text    NOT NULL,
    version  integer NOT NULL,
    meta     jsonb   NOT NULL,
    steps    jsonb,
    added    timestamp NOT NULL DEFAULT now(),
    added_by text,
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS image_analyses (
    id                   serial PRIMARY KEY,
    plate_acquisition_id integer NOT NULL,
    pipeline_name        text,
    start                timestamp,
    finish               timestamp,
    error                timestamp,
    meta                 jsonb,
    depends_on_id        jsonb,
    result               jsonb,
    submitted            timestamp DEFAULT now(),
    priority             integer,
    status               jsonb
);
CREATE INDEX IF NOT EXISTS image_analyses_plate_acquisition_id_idx ON image_analyses (plate_acquisition_id);

CREATE TABLE IF NOT EXISTS image_sub_analyses (
    sub_id               serial PRIMARY KEY,
    analysis_id          integer NOT NULL,
    plate_acquisition_id integer NOT NULL,
    start                timestamp,
    finish               timestamp,
    error                timestamp,
    meta                 jsonb,
    depends_on_sub_id    jsonb,
    result               jsonb,
    priority             integer,
    status               jsonb
);
CREATE INDEX IF NOT EXISTS image_sub_analyses_analysis_id_idx ON image_sub_analyses (analysis_id);
-- The sensor's query: sub-analyses not yet started nor failed, by priority.
CREATE INDEX IF NOT EXISTS image_sub_analyses_pending_idx
    ON image_sub_analyses (priority, sub_id) WHERE start IS NULL AND error IS NULL;

CREATE TABLE IF NOT EXISTS image_analyses_automation (
    project       text,
    cell_line     text,
    pipeline_name text,
    channel_map   integer
);

CREATE TABLE IF NOT EXISTS image_analyses_automation_submitted (
    plate_acq_id integer PRIMARY KEY,
    time         timestamp DEFAULT now()
);

-- The lab's notifications (cpp_dagster/imagedb/notifications.py): one row per analysis
-- outcome (finished, failed, cancelled), written in the outcome's own transaction and
-- drained by the notify_lab sensor. The unique key makes a second report of the same
-- outcome (a hook and a run-status sensor, two sub-analyses failing) no second row.
CREATE TABLE IF NOT EXISTS image_analyses_notifications (
    id            bigserial PRIMARY KEY,
    analysis_id   integer   NOT NULL,
    state         text      NOT NULL,
    outcome_at    timestamp NOT NULL,
    message       text,
    created       timestamp NOT NULL DEFAULT now(),
    sent_to       text[]    NOT NULL DEFAULT '{}',
    attempts      integer   NOT NULL DEFAULT 0,
    next_attempt  timestamp NOT NULL DEFAULT now(),
    claimed_until timestamp,
    done          timestamp,
    last_error    text,
    UNIQUE (analysis_id, state, outcome_at)
);
CREATE INDEX IF NOT EXISTS image_analyses_notifications_due_idx
    ON image_analyses_notifications (next_attempt, id) WHERE done IS NULL;
