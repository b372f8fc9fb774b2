"""Deterministic synthetic Cell Painting images.

Renders fluorescence-like images for Cell Painting dyes so a CellProfiler pipeline
has something realistic enough to segment: bright elliptical nuclei (HOECHST),
larger irregular cell bodies with a membrane rim (PHAandWGA), nucleoli + cytoplasmic
RNA (SYTO), punctate mitochondria (MITO), diffuse perinuclear ER (CONC). Any list of
dye names works: each gets the pattern its name suggests (``pattern_of``; e.g. the
JUMP names OrigDNA, OrigER, OrigRNA, OrigAGP, OrigMito, OrigBrightfield*), any size
(a 2160x2160 field as a Phenix writes it), and ``cell_scale`` enlarges the cells for
pipelines that expect a higher magnification (JUMP: nuclei 15-90 px across).

Files are 16-bit TIFFs, LZW-compressed by default as microscopes write them
(``compression``: none, lzw, deflate, zstd). Command line::

    python -m cpp_dagster.demo.synthetic_plate OUT_DIR --barcode P1 --wells B02 --sites 1 2 \
        [--dyes OrigDNA OrigER ...] [--size 2160] [--cell-scale 2] [--compression none]

Every image is a pure function of ``(seed, well, site, z)``; randomness comes
from ``numpy.random.default_rng`` seeded through SHA-256 (never ``hash()``),
so output is identical across processes and platforms.

Only numpy, scipy, tifffile and the standard library are used.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import tifffile
from scipy import ndimage as ndi

DYES = ["HOECHST", "CONC", "SYTO", "MITO", "PHAandWGA"]
"""The demo's Cell Painting dyes; the channel number of a dye is its index + 1."""

COMPRESSION = {"none": None, "lzw": "lzw", "deflate": "zlib", "zstd": "zstd"}
"""--compression choice -> tifffile codec (LZW is what Phenix/Operetta/ImageXpress write)."""

# Name fragments (case-insensitive) -> the pattern a dye gets; checked in this order,
# so "OrigBrightfield_L" is brightfield and "OrigRNA" is RNA.
_PATTERNS = (
    (("brightfield", "bf", "phase", "dpc"), "brightfield"),
    (("hoechst", "dapi", "dna", "draq"), "nucleus"),
    (("syto", "rna"), "rna"),
    (("mito",), "mito"),
    (("pha", "wga", "agp", "actin", "golgi", "membrane"), "membrane"),
    (("conc", "er"), "er"),
)
_FALLBACK = ("nucleus", "er", "rna", "mito", "membrane")

_VERSION = "synthetic-plate-v1"

# Camera model (16-bit counts).
_CAMERA_OFFSET = 100.0
_READ_NOISE = 12.0
# Peak signal (counts above background) per pattern, before per-cell variation.
_PEAK = {"nucleus": 14000.0, "er": 5000.0, "rna": 6000.0, "mito": 9000.0, "membrane": 6000.0, "brightfield": 9000.0}
_BACKGROUND = {"nucleus": 350.0, "er": 450.0, "rna": 400.0, "mito": 350.0, "membrane": 500.0, "brightfield": 0.0}


def pattern_of(dye: str, position: int = 0) -> str:
    """The synthetic pattern a dye name gets; an unknown name gets one by its position."""
    name = dye.lower().removeprefix("orig")
    for fragments, pattern in _PATTERNS:
        if any(f == name or (len(f) > 2 and f in name) for f in fragments) or name.startswith(fragments):
            return pattern
    return _FALLBACK[position % len(_FALLBACK)]


def _rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded stably from ``parts`` (SHA-256, not hash())."""
    key = "|".join([_VERSION, *[str(p) for p in parts]]).encode("utf-8")
    digest = hashlib.sha256(key).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    std = field.std()
    return field / std if std > 0 else field


def _n_cells(seed: int, well: str, site: int, size: int, cell_scale: float = 1.0) -> int:
    """Cells per site: a per-well level plus per-site jitter, scaled by area (in cells)."""
    well_level = _rng(seed, "well-density", well).integers(18, 36)
    jitter = _rng(seed, "site-density", well, site).integers(-3, 4)
    area = (size / (256.0 * cell_scale)) ** 2
    n = int(round((well_level + jitter) * area))
    return max(1, min(n, int(40 * area) + 1))


def _place_cells(rng: np.random.Generator, n: int, size: int, cell_scale: float = 1.0) -> np.ndarray:
    """Random sequential placement with a minimum centre distance."""
    margin = 13.0 * cell_scale
    min_dist = 25.0 * cell_scale
    centres: list[tuple[float, float]] = []
    tries = 0
    while len(centres) < n and tries < 4000:
        tries += 1
        y, x = rng.uniform(margin, size - margin, size=2)
        if all((y - cy) ** 2 + (x - cx) ** 2 >= min_dist**2 for cy, cx in centres):
            centres.append((y, x))
    return np.asarray(centres, dtype=float).reshape(-1, 2)


def _illumination(seed: int, dye: str, size: int) -> np.ndarray:
    """Smooth multiplicative illumination field (plate/microscope property).

    Depends only on (seed, dye) so it is shared by all wells and sites, which
    is what makes illumination correction meaningful.
    """
    rng = _rng(seed, "illum", dye)
    yy, xx = np.mgrid[0:size, 0:size].astype(float) / max(size - 1, 1)
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    vignette = 1.0 - rng.uniform(0.2, 0.35) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
    ty, tx = rng.uniform(-0.08, 0.08, size=2)
    tilt = 1.0 + ty * (yy - 0.5) + tx * (xx - 0.5)
    return vignette * tilt


def _render_clean(
    seed: int, well: str, site: int, size: int, dyes: list[str], cell_scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Noise-free, unblurred signal per dye (0..~1 relative units) for one site."""
    rng = _rng(seed, "layout", well, site)
    shape = (size, size)
    centres = _place_cells(rng, _n_cells(seed, well, site, size, cell_scale), size, cell_scale)
    n = len(centres)
    if n == 0:
        return {d: np.zeros(shape) for d in dyes}

    # Per-cell parameters (index 0 unused so labels can index directly).
    nuc_a = np.r_[1.0, rng.uniform(6.5, 9.5, n) * cell_scale]  # nucleus semi-major axis (px)
    nuc_b = nuc_a * np.r_[1.0, rng.uniform(0.7, 1.0, n)]
    nuc_ang = np.r_[0.0, rng.uniform(0, np.pi, n)]
    cell_r = nuc_a * np.r_[1.0, rng.uniform(1.9, 2.5, n)]  # cell radius (px)
    harm_amp = np.vstack([np.zeros((1, 3)), rng.uniform(0.0, 0.12, (n, 3))])
    harm_phase = np.vstack([np.zeros((1, 3)), rng.uniform(0, 2 * np.pi, (n, 3))])
    dna = np.r_[0.0, rng.uniform(0.65, 1.0, n)]
    cyto = np.r_[0.0, rng.uniform(0.7, 1.0, n)]

    # Per-well phenotype factors so wells differ a little beyond cell counts.
    wrng = _rng(seed, "well-phenotype", well)
    well_factor = {d: float(wrng.uniform(0.85, 1.15)) for d in dyes}

    # Voronoi partition: every pixel belongs to its nearest cell centre.
    seeds = np.zeros(shape, dtype=np.int32)
    iy = np.clip(np.round(centres[:, 0]).astype(int), 0, size - 1)
    ix = np.clip(np.round(centres[:, 1]).astype(int), 0, size - 1)
    seeds[iy, ix] = np.arange(1, n + 1)
    _, (near_y, near_x) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[near_y, near_x]

    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cy = np.r_[0.0, centres[:, 0]][owner]
    cx = np.r_[0.0, centres[:, 1]][owner]
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)

    # Irregular cell outline: radius modulated by low-order harmonics.
    k = np.arange(2, 5)[None, None, :]
    radius = cell_r[owner] * (1.0 + (harm_amp[owner] * np.cos(k * theta[..., None] + harm_phase[owner])).sum(-1))
    rnorm = dist / radius
    cell_mask = rnorm < 1.0

    # Elliptical nucleus.
    ca, sa = np.cos(nuc_ang[owner]), np.sin(nuc_ang[owner])
    u = (dx * ca + dy * sa) / nuc_a[owner]
    v = (-dx * sa + dy * ca) / nuc_b[owner]
    enorm = np.sqrt(u * u + v * v)
    nuc_mask = enorm < 1.0
    cyto_mask = cell_mask & ~nuc_mask

    out: dict[str, np.ndarray] = {}

    # HOECHST: bright nuclei with chromatin texture, slightly domed profile.
    chromatin = 1.0 + 0.12 * _smooth_noise(rng, shape, 1.2)
    dome = np.clip(1.0 - 0.25 * enorm**2, 0.0, 1.0)
    out["nucleus"] = nuc_mask * dna[owner] * dome * chromatin

    # PHAandWGA: cytoplasm + bright membrane rim + faint nuclear signal + fibres.
    rim = np.exp(-(((rnorm - 0.92) / 0.07) ** 2))
    fibres = 1.0 + 0.25 * _smooth_noise(rng, shape, 1.5)
    out["membrane"] = cell_mask * cyto[owner] * (0.35 * fibres + 0.65 * rim) + 0.12 * nuc_mask

    # SYTO: nucleoli (2-4 spots per nucleus) + cytoplasmic RNA decaying outwards.
    nucleoli = np.zeros(shape)
    for i in range(1, n + 1):
        for _ in range(int(rng.integers(2, 5))):
            rr = rng.uniform(0.0, 0.5) * nuc_b[i]
            ang = rng.uniform(0, 2 * np.pi)
            py = int(round(centres[i - 1, 0] + rr * np.sin(ang)))
            px = int(round(centres[i - 1, 1] + rr * np.cos(ang)))
            if 0 <= py < size and 0 <= px < size:
                nucleoli[py, px] += rng.uniform(0.7, 1.0)
    nucleoli = ndi.gaussian_filter(nucleoli, 1.3) * (2 * np.pi * 1.3**2)
    out["rna"] = nuc_mask * (0.25 + nucleoli) + cyto_mask * 0.45 * np.exp(-rnorm * 1.5) * cyto[owner]

    # MITO: punctate, denser near the nucleus.
    density = cyto_mask * np.exp(-1.2 * rnorm) * 0.18
    puncta = (rng.random(shape) < density) * rng.gamma(3.0, 0.33, shape)
    out["mito"] = ndi.gaussian_filter(puncta, 0.9) * (2 * np.pi * 0.9**2) * 0.8 + 0.06 * cell_mask

    # CONC: diffuse, reticular perinuclear ER.
    reticulum = np.clip(1.0 + 0.6 * (_smooth_noise(rng, shape, 1.0) - 0.5 * _smooth_noise(rng, shape, 3.0)), 0.0, None)
    out["er"] = cyto_mask * np.exp(-1.8 * np.clip(rnorm - 0.35, 0, None)) * reticulum * cyto[owner] + 0.1 * nuc_mask

    # Brightfield: bright flat field, cells a little darker with a dark rim (no random draws,
    # so the other patterns stay the same whatever the dyes).
    out["brightfield"] = 1.0 - cell_mask * (0.08 + 0.25 * rim) - 0.1 * nuc_mask

    return {d: out[pattern_of(d, i)] * well_factor[d] for i, d in enumerate(dyes)}


def render_site(
    seed: int,
    well: str,
    site: int,
    z: int = 0,
    size: int = 256,
    z_planes: int = 1,
    dyes: list[str] | None = None,
    cell_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Render one field of view; returns ``{dye: uint16 image}``.

    The cell layout depends on ``(seed, well, site)``; ``z`` selects a focal
    plane: planes away from the middle one (``(z_planes - 1) / 2``, i.e.
    ``z = 0`` when ``z_planes == 1``) are progressively more defocused.
    Noise depends on ``(seed, well, site, z)``. Fully deterministic.
    """
    dyes = list(dyes or DYES)
    clean = _render_clean(seed, well, site, size, dyes, cell_scale)
    defocus = abs(z - (z_planes - 1) / 2.0)
    psf_sigma = float(np.hypot(0.9, 1.2 * defocus))
    noise_rng = _rng(seed, "noise", well, site, z)
    images: dict[str, np.ndarray] = {}
    for i, dye in enumerate(dyes):
        pattern = pattern_of(dye, i)
        signal = ndi.gaussian_filter(clean[dye], psf_sigma) * _PEAK[pattern]
        expected = (_BACKGROUND[pattern] + signal) * _illumination(seed, dye, size)
        counts = noise_rng.poisson(np.clip(expected, 0, None)).astype(float)
        counts += _CAMERA_OFFSET + noise_rng.normal(0.0, _READ_NOISE, counts.shape)
        images[dye] = np.clip(np.round(counts), 0, 65535).astype(np.uint16)
    return images


def write_plate(
    folder: pathlib.Path,
    barcode: str,
    wells: list[str],
    sites: list[int],
    seed: int,
    z_planes: int = 1,
    size: int = 256,
    *,
    dyes: list[str] | None = None,
    compression: str = "lzw",
    cell_scale: float = 1.0,
) -> list[dict]:
    """Write a synthetic plate as 16-bit TIFFs (LZW-compressed unless ``compression``
    says otherwise) and return one record per file.

    Files are named ``<barcode>_<well>_s<site>_z<z>_w<channel>.tif`` (channel = the
    dye's position in ``dyes`` + 1) and each record is
    ``{"well", "site", "z", "channel", "dye", "path"}`` with an absolute ``path``.
    """
    if compression not in COMPRESSION:
        raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSION)}")
    dyes = list(dyes or DYES)
    folder = pathlib.Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for well in wells:
        for site in sites:
            for z in range(z_planes):
                images = render_site(
                    seed, well, site, z=z, size=size, z_planes=z_planes, dyes=dyes, cell_scale=cell_scale
                )
                for channel, dye in enumerate(dyes, start=1):
                    path = folder / f"{barcode}_{well}_s{site}_z{z}_w{channel}.tif"
                    write_tiff(path, images[dye], compression)
                    records.append(
                        {
                            "well": well,
                            "site": int(site),
                            "z": int(z),
                            "channel": channel,
                            "dye": dye,
                            "path": str(path),
                        }
                    )
    return records


def write_tiff(path: pathlib.Path, image: np.ndarray, compression: str = "lzw") -> None:
    """One grayscale TIFF as a microscope writes it: ``compression`` is none, lzw, deflate or zstd."""
    tifffile.imwrite(path, image, photometric="minisblack", compression=COMPRESSION[compression])


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description="Write a synthetic Cell Painting plate as 16-bit TIFFs.")
    p.add_argument("folder", type=pathlib.Path)
    p.add_argument("--barcode", default="SYNTH-0001")
    p.add_argument("--wells", nargs="+", default=["B02"])
    p.add_argument("--sites", nargs="+", type=int, default=[1])
    p.add_argument("--dyes", nargs="+", default=DYES, help="image names, one channel each (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels, e.g. 2160")
    p.add_argument("--cell-scale", type=float, default=1.0, help="cell size factor (2: JUMP-like magnification)")
    p.add_argument("--z-planes", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compression", choices=list(COMPRESSION), default="lzw")
    a = p.parse_args(argv)
    records = write_plate(
        a.folder,
        a.barcode,
        a.wells,
        a.sites,
        a.seed,
        a.z_planes,
        a.size,
        dyes=a.dyes,
        compression=a.compression,
        cell_scale=a.cell_scale,
    )
    print(json.dumps({"files": len(records), "folder": str(a.folder.resolve())}))


if __name__ == "__main__":
    main()
