"""The resources of model training: the configuration store and the model registry.
Neither has a config field: the store's URL and the registry's URL or folder come from
the environment only, never from a run's config (a run pointing the registry at its own
server would be sent the registry token)."""

from __future__ import annotations

import dagster as dg

from cpp_dagster.defs.resources import required_url
from cpp_dagster.settings import Settings, load_settings
from cpp_dagster.training.registry import registry_for_deployment
from cpp_dagster.training.store import ConfigStore


class TrainingStoreResource(dg.ConfigurableResource):
    """The configuration store at CPP_TRAINING_DB_URL."""

    def store(self) -> ConfigStore:
        return ConfigStore(required_url(load_settings().training.db_url, "CPP_TRAINING_DB_URL"))


class ModelRegistryResource(dg.ConfigurableResource):
    """Where models are published: CPP_MODEL_REGISTRY_URL or CPP_MODEL_REGISTRY_DIR (the
    token from CPP_MODEL_REGISTRY_TOKEN)."""

    def registry(self, settings: Settings):
        return registry_for_deployment(settings.nas_root, settings.registry)
