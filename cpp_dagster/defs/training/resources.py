"""The resources of model training: the configuration store and the model registry."""

from __future__ import annotations

import dagster as dg

from cpp_dagster.defs.resources import required_url
from cpp_dagster.settings import Settings, load_settings
from cpp_dagster.training.registry import registry_for_deployment
from cpp_dagster.training.store import ConfigStore


class TrainingStoreResource(dg.ConfigurableResource):
    """The configuration store; `url` defaults to CPP_TRAINING_DB_URL."""

    url: str | None = None

    def store(self) -> ConfigStore:
        return ConfigStore(self.url or required_url(load_settings().training.db_url, "CPP_TRAINING_DB_URL"))


class ModelRegistryResource(dg.ConfigurableResource):
    """Where models are published: unset fields come from CPP_MODEL_REGISTRY_URL /
    CPP_MODEL_REGISTRY_DIR (the token only ever from CPP_MODEL_REGISTRY_TOKEN)."""

    url: str | None = None
    directory: str | None = None

    def registry(self, settings: Settings):
        from cpp_dagster.training.registry import FolderModelRegistry, HttpModelRegistry

        if self.url:
            return HttpModelRegistry(self.url, token=settings.registry.token)
        if self.directory:
            return FolderModelRegistry(self.directory)
        return registry_for_deployment(settings.nas_root, settings.registry)
