-- The training configuration store: one row per content-addressed version.
-- `version` is the SHA-256 of the normalised configuration (configuration.py), so adding
-- the same content again finds the existing row instead of creating a version.
CREATE TABLE IF NOT EXISTS training_config_versions (
    id            bigserial PRIMARY KEY,          -- order of arrival; the sensor's cursor
    version       text NOT NULL UNIQUE,
    partition_key text NOT NULL UNIQUE,           -- <workflow>-<version[:12]>, the Dagster partition
    workflow      text NOT NULL,
    config        jsonb NOT NULL,
    added         timestamptz NOT NULL DEFAULT now(),
    added_by      text
);
CREATE INDEX IF NOT EXISTS training_config_versions_workflow ON training_config_versions (workflow, id);
