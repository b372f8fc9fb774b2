"""Every form a database or service URL takes in this project's settings is shown without
its password: in `cpp-dagster settings`, in a message about an unreachable database, in a
registry error or location. `redact_url` missed `?password=` URLs and key/value DSNs."""

from __future__ import annotations

import pytest

from cpp_dagster.setting_rules import redact_url
from cpp_dagster.training.registry import HttpModelRegistry

SECRET = "Sup3r-s3cret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://reader:{SECRET}@db.lab:5432/chembl",
        f"postgresql://reader:{SECRET}@@db.lab/chembl",  # an @ in the password
        f"postgresql+psycopg2://dagster:{SECRET}@db.lab/dagster",
        f"postgresql://reader@db.lab/chembl?password={SECRET}&sslmode=require",
        f"postgresql:///chembl?host=/run/postgresql&PassWord={SECRET}",
        f"postgresql://db.lab/chembl?sslmode=verify-full&sslpassword={SECRET}",
        f"host=db.lab user=reader password={SECRET} dbname=chembl",
        f"host=db.lab password = '{SECRET} with spaces \\' and a quote' dbname=chembl",
        f'dbname=chembl password="{SECRET} two"',
        f"https://publisher:{SECRET}@models.lab/api",
        f'could not connect: invalid dsn: missing "=" after "postgresql://u:{SECRET}@h/db" in connection info',
    ],
)
def test_no_password_survives_redaction(url):
    shown = redact_url(url)
    assert SECRET not in shown and "***" in shown


def test_what_is_not_a_secret_is_left_as_it_is():
    assert redact_url("postgresql://reader@db.lab:5432/chembl?sslmode=require") == (
        "postgresql://reader@db.lab:5432/chembl?sslmode=require"
    )
    assert redact_url("host=db.lab user=reader dbname=chembl") == "host=db.lab user=reader dbname=chembl"


def test_a_registry_url_with_credentials_keeps_them_out_of_its_location_and_requests():
    registry = HttpModelRegistry(f"https://publisher:{SECRET}@models.lab/api/")
    assert registry.url == "https://models.lab/api"
    assert SECRET not in registry.url and registry.basic is not None
