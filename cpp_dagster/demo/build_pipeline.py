"""Build the demo Cell Painting feature-extraction pipeline (.cppipe).

Run with the CellProfiler interpreter (NOT the project env), e.g.::

    /path/to/cpvenv/bin/python cpp_dagster/demo/build_pipeline.py OUT.cppipe

The pipeline is assembled with the ``cellprofiler_core`` API and tuned for the
images produced by ``cpp_dagster/demo/synthetic_plate.py`` (256x256, nuclei
~13-19 px across, cells ~30-45 px across, 16-bit TIFF):

1. LoadData              images + Metadata_* from the CSV given via --data-file
2. IdentifyPrimaryObjects   HOECHST -> Nuclei
3. IdentifySecondaryObjects Nuclei + PHAandWGA -> Cells (propagation)
4. IdentifyTertiaryObjects  Cells - Nuclei -> Cytoplasm
5. MeasureObjectIntensity   5 images x {Nuclei, Cells, Cytoplasm}
6. MeasureObjectSizeShape   {Nuclei, Cells, Cytoplasm}
7. MeasureTexture           {HOECHST, MITO} x {Nuclei}, scale 3
8. MeasureImageIntensity    5 images (image level)
9. ExportToSpreadsheet      MyExpt_{Image,Experiment,Nuclei,Cells,Cytoplasm}.csv

With ``--nuclei-only``: modules 1, 2 (Nuclei only), 5-6 on Nuclei and 9 (a pipeline
without a Cells object, ``build_nuclei_only_pipeline``).

Only the standard library and cellprofiler_core / cellprofiler are imported
(this file must not import cpp_dagster). ``build_icf_pipelines.py`` builds the
illumination-correction variants from the same parts (``load_data_module``,
``feature_modules``, ``export_module``, ``assemble``, ``write_pipeline``).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

DYES = ["HOECHST", "CONC", "SYTO", "MITO", "PHAandWGA"]
METADATA = ["Barcode", "Well", "Site", "AcqID", "z"]
NUCLEI, CELLS, CYTOPLASM = "Nuclei", "Cells", "Cytoplasm"


def _choose(setting, text: str) -> None:
    """Set a Choice setting by its display text (handles enum-valued choices)."""
    for choice in getattr(setting, "choices", []) or []:
        label = getattr(choice, "value", choice)
        if label == text or str(choice) == text:
            setting.value = choice
            return
    setting.value = text


def _set_list(setting, names: list[str]) -> None:
    """List subscribers take their value as a ", "-joined string."""
    setting.value = ", ".join(names)


def _tune_threshold(module, method: str, smoothing: float, correction: float, bounds) -> None:
    t = module.threshold
    _choose(t.threshold_scope, "Global")
    _choose(t.global_operation, method)
    _choose(t.two_class_otsu, "Two classes")
    t.threshold_smoothing_scale.value = smoothing
    t.threshold_correction_factor.value = correction
    t.threshold_range.value = bounds


def headless() -> None:
    """Configure cellprofiler_core for building pipelines without a GUI (call first)."""
    from cellprofiler_core.preferences import set_awt_headless, set_headless

    set_headless()
    set_awt_headless(True)


def load_data_module():
    """LoadData: the CSV is supplied at run time with --data-file; the configured
    location is only a placeholder. URL_<name> columns carry absolute file: URLs, so no
    base image folder is needed. `.npy` images (illumination functions) are loaded as
    they are: rescaling applies to integer image files only."""
    from cellprofiler_core.modules.loaddata import LoadData
    from cellprofiler_core.preferences import DEFAULT_INPUT_FOLDER_NAME, NO_FOLDER_NAME

    load = LoadData()
    load.csv_directory.value = f"{DEFAULT_INPUT_FOLDER_NAME}|"
    load.csv_file_name.value = "load_data.csv"
    load.wants_images.value = True
    load.rescale.value = True
    load.image_directory.value = f"{NO_FOLDER_NAME}|"
    load.wants_rows.value = False
    load.wants_image_groupings.value = False
    return load


def export_module():
    """ExportToSpreadsheet: one CSV per table, "MyExpt_" prefix."""
    from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
    from cellprofiler_core.preferences import DEFAULT_OUTPUT_FOLDER_NAME

    export = ExportToSpreadsheet()
    _choose(export.delimiter, 'Comma (",")')
    export.directory.value = f"{DEFAULT_OUTPUT_FOLDER_NAME}|"
    export.add_metadata.value = False
    export.add_filepath.value = False
    export.pick_columns.value = False
    export.wants_aggregate_means.value = False
    export.wants_aggregate_medians.value = False
    export.wants_aggregate_std.value = False
    export.wants_genepattern_file.value = False
    export.wants_everything.value = True
    _choose(export.nan_representation, "NaN")
    export.wants_prefix.value = True
    export.prefix.value = "MyExpt_"
    export.wants_overwrite_without_warning.value = True
    return export


def assemble(modules: list):
    """A Pipeline of `modules`, numbered in order."""
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    for number, module in enumerate(modules, start=1):
        module.module_num = number
        pipeline.add_module(module)
    return pipeline


def nuclei_module(image: str):
    """IdentifyPrimaryObjects: Nuclei from `image` (the HOECHST image)."""
    from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects

    nuc = IdentifyPrimaryObjects()
    nuc.x_name.value = image
    nuc.y_name.value = NUCLEI
    nuc.size_range.value = (8, 30)
    nuc.exclude_size.value = True
    nuc.exclude_border_objects.value = True
    _choose(nuc.unclump_method, "Intensity")
    _choose(nuc.watershed_method, "Intensity")
    # Declumping: nuclei are ~13-19 px across with some chromatin texture;
    # the automatic values (derived from the 8 px minimum diameter) split
    # elongated nuclei, so fix the smoothing / maxima spacing explicitly.
    nuc.automatic_smoothing.value = False
    nuc.smoothing_filter_size.value = 7
    nuc.automatic_suppression.value = False
    nuc.maxima_suppression_size.value = 8.0
    nuc.low_res_maxima.value = True
    _choose(nuc.fill_holes, "After both thresholding and declumping")
    _choose(nuc.limit_choice, "Continue")
    nuc.use_advanced.value = True
    _tune_threshold(nuc, "Otsu", smoothing=1.3488, correction=1.0, bounds=(0.0, 1.0))
    return nuc


def measurement_modules(images: list[str], objects: list[str]) -> list:
    """MeasureObjectIntensity (`images` x `objects`) and MeasureObjectSizeShape (`objects`,
    Zernikes on: cheap at this image size)."""
    from cellprofiler.modules.measureobjectintensity import MeasureObjectIntensity
    from cellprofiler.modules.measureobjectsizeshape import MeasureObjectSizeShape

    intensity = MeasureObjectIntensity()
    _set_list(intensity.images_list, images)
    _set_list(intensity.objects_list, objects)
    shape = MeasureObjectSizeShape()
    _set_list(shape.objects_list, objects)
    shape.calculate_zernikes.value = True
    shape.calculate_advanced.value = False
    return [intensity, shape]


def feature_modules(image_of: dict[str, str] | None = None) -> list:
    """Modules 2-8 of the demo pipeline (segmentation and measurements). `image_of` maps
    each dye to the name of the image to use for it (default: the dye's own image, as
    LoadData names it), e.g. illumination-corrected images."""
    from cellprofiler.modules.identifysecondaryobjects import IdentifySecondaryObjects
    from cellprofiler.modules.identifytertiaryobjects import IdentifyTertiaryObjects
    from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
    from cellprofiler.modules.measuretexture import MeasureTexture

    image = {dye: dye for dye in DYES} | (image_of or {})
    # 2. Nuclei from HOECHST.
    modules = [nuclei_module(image["HOECHST"])]

    # 3. Cells: propagate Nuclei over PHAandWGA.
    cells = IdentifySecondaryObjects()
    cells.x_name.value = NUCLEI
    cells.y_name.value = CELLS
    _choose(cells.method, "Propagation")
    cells.image_name.value = image["PHAandWGA"]
    cells.regularization_factor.value = 0.05
    cells.wants_discard_edge.value = False
    cells.wants_discard_primary.value = False
    cells.fill_holes.value = True
    _tune_threshold(cells, "Otsu", smoothing=1.0, correction=0.9, bounds=(0.0, 1.0))
    modules.append(cells)

    # 4. Cytoplasm = Cells - Nuclei.
    cyto = IdentifyTertiaryObjects()
    cyto.secondary_objects_name.value = CELLS
    cyto.primary_objects_name.value = NUCLEI
    cyto.subregion_objects_name.value = CYTOPLASM
    cyto.shrink_primary.value = True
    modules.append(cyto)

    # 5-6. Per-object intensities, size / shape.
    modules += measurement_modules([image[d] for d in DYES], [NUCLEI, CELLS, CYTOPLASM])

    # 7. Texture at a single small scale, objects only.
    texture = MeasureTexture()
    _set_list(texture.images_list, [image["HOECHST"], image["MITO"]])
    _set_list(texture.objects_list, [NUCLEI])
    texture.gray_levels.value = 256
    _choose(texture.images_or_objects, "Objects")
    if len(texture.scale_groups) == 0:
        texture.add_scale(removable=False)
    texture.scale_groups[0].scale.value = 3
    modules.append(texture)

    # 8. Whole-image intensities (cheap, image-level QC).
    image_intensity = MeasureImageIntensity()
    _set_list(image_intensity.images_list, [image[d] for d in DYES])
    image_intensity.wants_objects.value = False
    image_intensity.wants_percentiles.value = False
    modules.append(image_intensity)

    return modules


def build_pipeline():
    headless()
    return assemble([load_data_module(), *feature_modules(), export_module()])


def build_nuclei_only_pipeline():
    """A pipeline that segments only nuclei (no Cells object): LoadData, Nuclei from
    HOECHST, their intensities and shapes, ExportToSpreadsheet (Image, Experiment, Nuclei)."""
    headless()
    return assemble(
        [load_data_module(), nuclei_module("HOECHST"), *measurement_modules(DYES, [NUCLEI]), export_module()]
    )


def quiet_logging() -> None:
    """Importing cellprofiler logs warnings for optional modules that cannot be loaded
    (ClassifyObjects/FilterObjects/FlagImage need rapidfuzz, MySQL); none of them is
    used here, so keep stderr quiet unless something fails."""
    logging.basicConfig(level=logging.ERROR)


def write_pipeline(pipeline, output: pathlib.Path) -> bool:
    """Dump `pipeline` to `output` and load it back: False (and a message on stderr) if
    the file does not give the same modules with the same settings."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as fp:
        pipeline.dump(fp, save_image_plane_details=False)

    from cellprofiler_core.pipeline import Pipeline

    check = Pipeline()
    check.load(str(output))

    def described(p):
        return [(m.module_name, [s.unicode_value for s in m.settings()]) for m in p.modules()]

    if described(check) != described(pipeline):
        names = [m.module_name for m in check.modules()]
        print(f"{output}: round-trip mismatch ({names} as loaded back)", file=sys.stderr)
        return False
    names = [m.module_name for m in check.modules()]
    print(f"wrote {output} ({len(names)} modules: {', '.join(names)})")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=pathlib.Path, help="path of the .cppipe to write")
    parser.add_argument(
        "--nuclei-only",
        action="store_true",
        help="segment only nuclei (no Cells object): LoadData, nuclei, measurements, export",
    )
    args = parser.parse_args(argv)
    quiet_logging()
    pipeline = build_nuclei_only_pipeline() if args.nuclei_only else build_pipeline()
    return 0 if write_pipeline(pipeline, args.output) else 1


if __name__ == "__main__":
    sys.exit(main())
