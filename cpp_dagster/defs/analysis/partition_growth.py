"""New plate and pipeline partition keys, added in bounded chunks.

Dagster's daemon checks every key of an add-request on its own connection (9-18 ms a
key), and sensors tick one after another: 3,000 new plates in one request held the launch
sensor for about a minute, and every other sensor (run failures, cancellations, the
overview, automation, training) waited behind it. So each tick adds at most `limit` new
keys. The keys of the runs this tick requests come first (a run request for a key Dagster
does not have yet fails the tick), then new pipelines, then new plates in the order they
were registered (acquisition id). A run whose key did not fit waits in imagedb, still
ready, for a later tick. No cursor of our own: the keys Dagster already has are the
cursor, so nothing is lost across a daemon restart or a key added by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from cpp_dagster.defs.analysis.partitions import pipeline_partitions, plate_partitions, usable


@dataclass(frozen=True)
class NewKeys:
    """The keys one tick adds, what Dagster has already, and how many new keys are left
    for the next ticks."""

    pipelines: tuple[str, ...]
    plates: tuple[str, ...]
    left: int
    known_pipelines: frozenset[str] = field(repr=False, default=frozenset())
    known_plates: frozenset[str] = field(repr=False, default=frozenset())

    def requests(self) -> list[dg.AddDynamicPartitionsRequest]:
        return [
            definition.build_add_request(list(keys))
            for definition, keys in ((pipeline_partitions, self.pipelines), (plate_partitions, self.plates))
            if keys
        ]

    def has(self, pipeline: str, plate: str) -> bool:
        """True when a run of this partition can be requested in this tick."""
        return (pipeline in self.known_pipelines or pipeline in self.pipelines) and (
            plate in self.known_plates or plate in self.plates
        )


def new_keys(
    instance: dg.DagsterInstance,
    plates: dict[int, str],
    pipelines: Iterable[str],
    needed: Iterable[tuple[str, str]],
    limit: int,
) -> NewKeys:
    """The new keys of this tick: `plates` (acquisition id -> plate key) and `pipelines`
    (imagedb's pipeline names; one no key can hold is left out) that Dagster does not
    have, the (pipeline key, plate key) of this tick's runs first; at most `limit`."""
    known_pipelines = frozenset(instance.get_dynamic_partitions(pipeline_partitions.name))
    known_plates = frozenset(instance.get_dynamic_partitions(plate_partitions.name))
    wanted: dict[tuple[str, str], None] = {}  # (dimension, key), in the order they are added
    for pipeline, plate in needed:
        wanted[("pipeline", pipeline)] = None
        wanted[("plate", plate)] = None
    for pipeline in sorted(p for p in pipelines if usable(p)):
        wanted[("pipeline", pipeline)] = None
    for acq_id in sorted(plates):
        wanted[("plate", plates[acq_id])] = None
    known = {"pipeline": known_pipelines, "plate": known_plates}
    new = [(dimension, key) for dimension, key in wanted if key not in known[dimension]]
    chosen = new[:limit]
    return NewKeys(
        pipelines=tuple(key for dimension, key in chosen if dimension == "pipeline"),
        plates=tuple(key for dimension, key in chosen if dimension == "plate"),
        left=len(new) - len(chosen),
        known_pipelines=known_pipelines,
        known_plates=known_plates,
    )
