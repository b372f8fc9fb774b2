"""From a sub-analysis to image sets, batches and LoadData CSV text.

Pure functions: no database, no files. The analysis options (imagedb's sub-analysis
`meta`) are parsed once into `SubAnalysisOptions`; every later step takes typed values.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cpp_dagster import labels, paths
from cpp_dagster.imagedb.rows import Image, whole_number, whole_number_in
from cpp_dagster.imagedb.rows import priority_of as rows_priority_of

DEFAULT_JOB_TIMEOUT_S = 10800
MAX_JOB_TIMEOUT_S = 7 * 24 * 3600  # a batch that needs longer should be split (batch_size)
SUB_ANALYSIS_TYPES = ("cellprofiler",)
SUB_TYPES = ("qc", "icf", "features")  # resource sizing on Kubernetes; a pod label
QUALITY_POLICIES = ("warn", "block")  # what a failed ERROR quality check does (analysis/quality.py)


class PlanningError(ValueError):
    """The analysis cannot be planned as submitted; the message says why, for a scientist."""


class IcfNaming(StrEnum):
    """How illumination functions are named (sub-analysis meta `icf_naming`):

    - `pharmbio` (default): file `ICF_<dye>.npy`, loaded as image `ICF_<dye>`.
    - `broad` (Broad/JUMP pipelines): file `<Plate>_Illum<Ch>.npy`, loaded as image
      `Illum<Ch>`, where `<Ch>` is the dye without its `Orig` prefix (OrigDNA -> IllumDNA)
      and `<Plate>` the plate barcode (the pipelines' `Metadata_Plate`).

    Set on the sub-analysis that reads the functions (the one with `use_icf`); the
    pipeline's `analysis_meta` describes the analysis and reaches no sub-analysis.
    """

    PHARMBIO = "pharmbio"
    BROAD = "broad"

    @classmethod
    def parse(cls, value: Any) -> IcfNaming:
        if value in (None, ""):
            return cls.PHARMBIO
        try:
            return cls(value.strip().lower() if isinstance(value, str) else value)
        except ValueError:
            raise PlanningError(
                f"'icf_naming' must be 'pharmbio' (files ICF_<dye>.npy) or 'broad' (files "
                f"<Plate>_Illum<Ch>.npy, as the Broad/JUMP pipelines name them), got {value!r}"
            ) from None


@dataclass(frozen=True)
class SubAnalysisOptions:
    pipeline_file: str
    batch_size: int = 0
    cp_version: str | None = None
    well_filter: tuple[str, ...] | None = None
    site_filter: tuple[int, ...] | None = None
    channels: tuple[str, ...] | None = None
    z: str | None = None
    use_icf: bool = False
    job_timeout: int = DEFAULT_JOB_TIMEOUT_S
    priority: int | None = None
    sub_type: str | None = None
    icf_naming: IcfNaming = IcfNaming.PHARMBIO
    quality: str = "warn"  # "block": a failed ERROR quality check fails the sub-analysis (analysis/quality.py)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> SubAnalysisOptions:
        """Every key checked before launch; a PlanningError names the key and what it
        may be. `batch_size` <= 0 is one batch of all image sets; `job_timeout` 1 s ..
        MAX_JOB_TIMEOUT_S; `priority` in PRIORITY_RANGE; `sub_type` one of SUB_TYPES;
        `cp_version` a Kubernetes label value (it picks an image and becomes a tag)."""
        kind = meta.get("type", "cellprofiler")
        if kind not in SUB_ANALYSIS_TYPES:
            raise PlanningError(f"sub-analysis type {kind!r} is not supported (only 'cellprofiler')")
        if not meta.get("pipeline_file"):
            raise PlanningError("sub-analysis meta has no 'pipeline_file'")
        try:
            pipeline_file = str(paths.relative(meta["pipeline_file"], "pipeline_file"))
        except paths.UnsafePathError as e:
            raise PlanningError(f"{e} (it names a file inside the pipelines folder)") from None

        def str_list(key: str) -> tuple[str, ...] | None:
            value = meta.get(key)
            if value in (None, [], ""):
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PlanningError(f"{key!r} must be a list of strings, got {value!r}")
            return tuple(value)

        sites = meta.get("site_filter")
        if sites not in (None, []):
            # a string is iterable too: "12" must not become sites (1, 2)
            if not isinstance(sites, list):
                raise PlanningError(f"'site_filter' must be a list of integers, got {sites!r}")
            try:
                sites = tuple(whole_number(s) for s in sites)
            except (TypeError, ValueError):
                raise PlanningError(f"'site_filter' must be a list of integers, got {sites!r}") from None
        else:
            sites = None
        batch_size = _int_in(meta, "batch_size", 0, None, None, "image sets per batch (0: one batch of all)")
        job_timeout = _int_in(
            meta, "job_timeout", DEFAULT_JOB_TIMEOUT_S, 1, MAX_JOB_TIMEOUT_S, "seconds (at most 7 days)"
        )
        priority = priority_of(meta.get("priority"))
        use_icf = meta.get("use_icf", False)
        if use_icf is None:
            use_icf = False
        if not isinstance(use_icf, bool):  # bool("false") is True
            raise PlanningError(f"'use_icf' must be true or false, got {use_icf!r}")
        z = meta.get("z")
        if z in (None, ""):
            z = None
        else:
            parse_z_spec(str(z))  # fail early on bad syntax
        wells = str_list("well_filter")
        return cls(
            pipeline_file=pipeline_file,
            batch_size=batch_size,
            cp_version=_label_value(meta, "cp_version"),
            well_filter=tuple(w.upper() for w in wells) if wells else None,
            site_filter=sites,
            channels=str_list("channels"),
            z=None if z is None else str(z),
            use_icf=use_icf,
            job_timeout=job_timeout,
            priority=priority,
            sub_type=_one_of(meta, "sub_type", SUB_TYPES),
            icf_naming=IcfNaming.parse(meta.get("icf_naming")),
            quality=_one_of(meta, "quality", QUALITY_POLICIES) or "warn",
        )


def _int_in(meta: Mapping[str, Any], key: str, default: int, low: int | None, high: int | None, unit: str) -> int:
    """meta[key] as a whole number in [low, high] (None: unbounded); absent or null is `default`."""
    value = meta.get(key)
    if value is None:
        return default
    try:
        return whole_number_in(key, value, low, high, unit)
    except ValueError as e:
        raise PlanningError(str(e)) from None


def priority_of(value: Any) -> int | None:
    """A priority (PRIORITY_RANGE, 1 = high) from meta; None when unset; PlanningError otherwise."""
    try:
        return rows_priority_of(value)
    except ValueError as e:
        raise PlanningError(str(e)) from None


def _label_value(meta: Mapping[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not labels.is_label_value(str(value)):
        raise PlanningError(f"{key!r} must be {labels.RULE} (a Kubernetes label); got {value!r}")
    return str(value)


def _one_of(meta: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if value not in allowed:
        raise PlanningError(f"{key!r} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@dataclass(frozen=True)
class ImageSet:
    """The images of one (timepoint, well, site, z) across the selected channels."""

    timepoint: int
    well: str
    site: int
    z: int
    paths: tuple[str, ...]  # one per dye, in the order of the plan's dyes


@dataclass(frozen=True)
class Batch:
    index: int
    image_sets: tuple[ImageSet, ...]

    @property
    def name(self) -> str:
        """Stable and a valid Dagster mapping key."""
        return f"batch_{self.index:04d}"


@dataclass(frozen=True)
class Plan:
    dyes: tuple[str, ...]
    batches: tuple[Batch, ...]

    @property
    def image_set_count(self) -> int:
        return sum(len(b.image_sets) for b in self.batches)


_Z_PART = re.compile(r"^\s*(\d{1,12})\s*(?:-\s*(\d{1,12})\s*)?$")
MAX_Z_SPEC_CHARS = 2000


@dataclass(frozen=True)
class ZPlanes:
    """The z planes a `z` specification names, kept as ranges: `"0-999999999999"` is one
    range, never a trillion numbers in memory."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, z: object) -> bool:
        return isinstance(z, int) and any(lo <= z <= hi for lo, hi in self.ranges)

    @property
    def count(self) -> int:
        """How many planes, overlapping ranges counted once."""
        total, reached = 0, -1
        for lo, hi in sorted(self.ranges):
            if hi > reached:
                total += hi - max(lo, reached + 1) + 1
                reached = hi
        return total


def parse_z_spec(spec: str) -> ZPlanes:
    """`"2-5,7"` -> the planes 2, 3, 4, 5 and 7 (as ranges)."""
    if len(spec) > MAX_Z_SPEC_CHARS:
        raise PlanningError(f"bad z specification: longer than {MAX_Z_SPEC_CHARS} characters")
    ranges = []
    for part in spec.split(","):
        m = _Z_PART.match(part)
        if not m:
            raise PlanningError(f"bad z specification {spec[:100]!r}: use numbers and ranges like '2-5,7'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise PlanningError(f"bad z range {part.strip()!r} in {spec[:100]!r}: end before start")
        ranges.append((lo, hi))
    return ZPlanes(tuple(ranges))


def middle_plane(z_values: Iterable[int]) -> int:
    """The middle z plane; of two middles, the lower one."""
    zs = sorted(set(z_values))
    return zs[(len(zs) - 1) // 2]


def select_dyes(channel_map: Mapping[int, str], channels: Sequence[str] | None) -> dict[int, str]:
    """channel number -> dye, narrowed to `channels` when given, in channel order."""
    if not channel_map:
        raise PlanningError("the plate acquisition's channel map is empty: no channel -> dye names")
    selected = dict(sorted(channel_map.items()))
    if channels:
        unknown = sorted(set(channels) - set(selected.values()))
        if unknown:
            raise PlanningError(f"channels {unknown} are not in the channel map ({', '.join(selected.values())})")
        selected = {ch: dye for ch, dye in selected.items() if dye in channels}
    dyes = list(selected.values())
    repeated = sorted({d for d in dyes if dyes.count(d) > 1})
    if repeated:
        # the LoadData CSV would get two FileName_<dye> columns
        raise PlanningError(f"dye(s) {', '.join(repeated)} name more than one channel in the channel map")
    return selected


@dataclass(frozen=True)
class PlanLimits:
    """How large one sub-analysis may be (the settings' `limits` group)."""

    max_z_planes: int = 1000
    max_image_sets: int = 200_000
    max_batches: int = 5000


def build_image_sets(
    images: Iterable[Image],
    channel_map: Mapping[int, str],
    options: SubAnalysisOptions,
    limits: PlanLimits = PlanLimits(),
) -> tuple[tuple[str, ...], list[ImageSet]]:
    """Filter the images by the options and group them into image sets, ordered by
    timepoint, well, site, z. Returns (dyes, image sets). `images` may be a stream: it
    is read once, and a plate beyond `limits` is refused while it is read."""
    dyes_by_channel = select_dyes(channel_map, options.channels)
    wells = set(options.well_filter) if options.well_filter else None
    sites = set(options.site_filter) if options.site_filter else None
    z_of = lambda im: im.z or 0  # noqa: E731 - imagedb may hold NULL for single-plane images
    named = parse_z_spec(options.z) if options.z else None
    if named is not None and named.count > limits.max_z_planes:
        raise PlanningError(
            f"z {options.z[:100]!r} names {named.count:,} planes; a sub-analysis may name at most "
            f"{limits.max_z_planes:,} (CPP_MAX_Z_PLANES)"
        )
    # every plane but one may still go (the middle plane, when z is not named)
    most = limits.max_image_sets * len(dyes_by_channel) * (1 if named is not None else limits.max_z_planes)
    kept, filtered = [], 0  # filtered: images that pass every filter but z
    for im in images:
        if (
            im.channel in dyes_by_channel
            and (wells is None or im.well.upper() in wells)
            and (sites is None or im.site in sites)
        ):
            filtered += 1
            if named is not None and z_of(im) not in named:
                continue
            kept.append(im)
            if len(kept) > most:
                raise _too_many_image_sets(f"more than {most:,} images", limits)
    if not kept:
        raise PlanningError(
            f"no images in z planes {options.z[:100]!r}"
            if named is not None and filtered
            else "no images left after the filters "
            f"(wells={list(options.well_filter or []) or 'all'}, sites={list(options.site_filter or []) or 'all'}, "
            f"channels={list(dyes_by_channel.values())})"
        )
    if named is None:
        middle = middle_plane(z_of(im) for im in kept)
        kept = [im for im in kept if z_of(im) == middle]

    channel_order = list(dyes_by_channel)
    groups: dict[tuple[int, str, int, int], dict[int, str]] = defaultdict(dict)
    for im in kept:
        # NULL timepoint is 1; a real timepoint 0 stays 0 (`or 1` merged it into timepoint 1)
        key = (1 if im.timepoint is None else im.timepoint, im.well.upper(), im.site, z_of(im))
        if im.channel in groups[key]:
            raise PlanningError(
                f"two images for channel {im.channel} ({dyes_by_channel[im.channel]}) in image set "
                f"{_describe(key)}: {groups[key][im.channel]} and {im.path}"
            )
        groups[key][im.channel] = im.path
    image_sets = []
    for key in sorted(groups):
        by_channel = groups[key]
        missing = [dyes_by_channel[ch] for ch in channel_order if ch not in by_channel]
        if missing:
            raise PlanningError(f"image set {_describe(key)} is missing channel(s) {', '.join(missing)}")
        image_sets.append(ImageSet(*key, paths=tuple(by_channel[ch] for ch in channel_order)))
    if len(image_sets) > limits.max_image_sets:
        raise _too_many_image_sets(f"{len(image_sets):,} image sets", limits)
    return tuple(dyes_by_channel.values()), image_sets


def _too_many_image_sets(found: str, limits: PlanLimits) -> PlanningError:
    return PlanningError(
        f"the sub-analysis has {found}; at most {limits.max_image_sets:,} image sets are planned "
        "(CPP_MAX_IMAGE_SETS): narrow it with well_filter, site_filter or z, or split it"
    )


def _describe(key: tuple[int, str, int, int]) -> str:
    timepoint, well, site, z = key
    return f"well {well} site {site} z {z} timepoint {timepoint}"


def split_batches(image_sets: Sequence[ImageSet], batch_size: int) -> list[Batch]:
    """Consecutive runs of `batch_size` image sets; `batch_size <= 0` is one batch of all."""
    size = batch_size if batch_size > 0 else max(len(image_sets), 1)
    return [
        Batch(i, tuple(image_sets[start : start + size])) for i, start in enumerate(range(0, len(image_sets), size))
    ]


def plan(
    images: Iterable[Image],
    channel_map: Mapping[int, str],
    options: SubAnalysisOptions,
    limits: PlanLimits = PlanLimits(),
) -> Plan:
    dyes, image_sets = build_image_sets(images, channel_map, options, limits)
    size = options.batch_size if options.batch_size > 0 else max(len(image_sets), 1)
    batches = -(-len(image_sets) // size)
    if batches > limits.max_batches:
        raise PlanningError(
            f"batch_size {options.batch_size} makes {batches:,} batches of {len(image_sets):,} image sets; "
            f"a sub-analysis may have at most {limits.max_batches:,} (CPP_MAX_BATCHES): use a larger batch_size"
        )
    return Plan(dyes=dyes, batches=tuple(split_batches(image_sets, options.batch_size)))


def check_image_roots(plan: Plan, roots: Sequence[Path]) -> None:
    """PlanningError naming the image paths of `plan` that lie outside every image root
    (CPP_IMAGE_ROOTS): CellProfiler would read whatever imagedb names."""
    outside = paths.outside_roots((p for b in plan.batches for s in b.image_sets for p in s.paths), roots)
    if outside:
        shown = ", ".join(repr(p[:200]) for p in outside[:3]) + (
            f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        )
        raise PlanningError(
            f"{len(outside)} image path(s) in imagedb are outside the image folders "
            f"(CPP_IMAGE_ROOTS: {':'.join(map(str, roots))}): {shown}; fix the paths in imagedb or the setting"
        )
