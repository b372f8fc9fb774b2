"""Build the demo illumination-correction pipelines (.cppipe).

Run with the CellProfiler interpreter (NOT the project env), e.g.::

    /path/to/cpvenv/bin/python cpp_dagster/demo/build_icf_pipelines.py OUT_DIR

writes two pipelines into OUT_DIR, assembled with the ``cellprofiler_core`` API from
the parts of ``build_pipeline.py`` (a sibling module: run as a script, this file's
folder is on ``sys.path``):

``demo_icf.cppipe`` (a ``sub_type: icf`` sub-analysis, one batch of every image set):

1.    LoadData                       images + Metadata_* from the CSV given via --data-file
2-11. per dye (HOECHST, CONC, SYTO, MITO, PHAandWGA), a pair of
      CorrectIlluminationCalculate   <dye> -> Illum<dye>: Regular intensity, one function
                                     from all image sets of the batch ("All": accumulated
                                     cycle by cycle, complete after the last), Gaussian
                                     smoothing (SMOOTHING_FILTER_PX), rescaled to >= 1
      SaveImages                     Illum<dye> -> ICF_<dye>.npy in the Default Output
                                     Folder, saved after the last cycle
12.   ExportToSpreadsheet            MyExpt_{Image,Experiment}.csv (one Image row per image set)

``demo_features_icf.cppipe`` (a ``sub_type: features`` sub-analysis with ``use_icf``):

1.    LoadData                       images and the ICF_<dye> illumination functions (the
                                     FileName_ICF_/PathName_ICF_/URL_ICF_ columns; a .npy
                                     is loaded as it is, not rescaled)
2.    CorrectIlluminationApply       Corr<dye> = <dye> / ICF_<dye>, for the five dyes
3-9.  the demo features pipeline (build_pipeline.feature_modules) on the Corr<dye>
      images: feature names carry the corrected image's name (e.g.
      Intensity_MeanIntensity_CorrHOECHST)
10.   ExportToSpreadsheet            as in the features pipeline

Both pipelines name every dye: a sub-analysis that narrows ``channels`` needs
pipelines built for its dyes (``build_icf_pipeline(dyes)``,
``build_features_icf_pipeline`` only for the five demo dyes).

Only the standard library and cellprofiler_core / cellprofiler are imported (this
file must not import cpp_dagster).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # also when imported, not run

from build_pipeline import (  # noqa: E402 - after the sys.path entry above
    DYES,
    _choose,
    assemble,
    export_module,
    feature_modules,
    headless,
    load_data_module,
    quiet_logging,
    write_pipeline,
)

ICF_PIPELINE, FEATURES_ICF_PIPELINE = "demo_icf.cppipe", "demo_features_icf.cppipe"
# Smoothing of the averaged image: a Gaussian of this full width at half maximum. The
# synthetic images are 256 px square with cells ~30-45 px across; 100 px removes the
# cells and keeps the field's slow vignetting (CellProfiler's automatic size would be
# 6 px here). Measured against the generator's true illumination field on 16 image sets,
# it lowered the field's residual non-uniformity (CV) from 5-8 % to 4-6 % per dye; a 100 or
# 150 px median filter left more of the cell layout in the function.
SMOOTHING_FILTER_PX = 100


def illumination_image(dye: str) -> str:
    return f"Illum{dye}"


def icf_image(dye: str) -> str:
    """The name LoadData gives the ICF_<dye>.npy file of a use_icf LoadData CSV (its
    FileName_ICF_<dye> column), and the file's stem."""
    return f"ICF_{dye}"


def corrected_image(dye: str) -> str:
    return f"Corr{dye}"


def calculate_module(dye: str):
    from cellprofiler.modules.correctilluminationcalculate import CorrectIlluminationCalculate

    calc = CorrectIlluminationCalculate()
    calc.image_name.value = dye
    calc.illumination_image_name.value = illumination_image(dye)
    _choose(calc.intensity_choice, "Regular")
    calc.dilate_objects.value = False
    _choose(calc.rescale_option, "Yes")
    _choose(calc.each_or_all, "All")
    _choose(calc.smoothing_method, "Gaussian Filter")
    _choose(calc.automatic_object_width, "Manually")
    calc.size_of_smoothing_filter.value = SMOOTHING_FILTER_PX
    calc.save_average_image.value = False
    calc.save_dilated_image.value = False
    return calc


def save_module(dye: str):
    from cellprofiler.modules.saveimages import SaveImages
    from cellprofiler_core.preferences import DEFAULT_OUTPUT_FOLDER_NAME

    save = SaveImages()
    _choose(save.save_image_or_figure, "Image")
    save.image_name.value = illumination_image(dye)
    _choose(save.file_name_method, "Single name")
    save.single_file_name.value = icf_image(dye)  # + ".npy"
    save.wants_file_name_suffix.value = False
    _choose(save.file_format, "npy")
    save.pathname.value = f"{DEFAULT_OUTPUT_FOLDER_NAME}|"
    _choose(save.when_to_save, "Last cycle")  # the function is complete after the last cycle
    save.overwrite.value = True
    save.update_file_names.value = False
    save.create_subdirectories.value = False
    return save


def build_icf_pipeline(dyes: list[str] | None = None):
    dyes = list(dyes or DYES)
    headless()
    per_dye = [module for dye in dyes for module in (calculate_module(dye), save_module(dye))]
    return assemble([load_data_module(), *per_dye, export_module()])


def apply_module(dyes: list[str]):
    from cellprofiler.modules.correctilluminationapply import CorrectIlluminationApply

    apply = CorrectIlluminationApply()
    while len(apply.images) < len(dyes):
        apply.add_image()
    for group, dye in zip(apply.images, dyes):
        group.image_name.value = dye
        group.corrected_image_name.value = corrected_image(dye)
        group.illum_correct_function_image_name.value = icf_image(dye)
        _choose(group.divide_or_subtract, "Divide")
    apply.truncate_low.value = True
    apply.truncate_high.value = True
    return apply


def build_features_icf_pipeline():
    headless()
    return assemble(
        [
            load_data_module(),
            apply_module(list(DYES)),
            *feature_modules({dye: corrected_image(dye) for dye in DYES}),
            export_module(),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=pathlib.Path, help=f"folder for {ICF_PIPELINE} and {FEATURES_ICF_PIPELINE}")
    args = parser.parse_args(argv)
    quiet_logging()
    ok = write_pipeline(build_icf_pipeline(), args.output_dir / ICF_PIPELINE)
    ok = write_pipeline(build_features_icf_pipeline(), args.output_dir / FEATURES_ICF_PIPELINE) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
