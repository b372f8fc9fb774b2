"""What a `.cppipe` needs and exports, as CellProfiler itself loads it.

Runs with the CellProfiler interpreter (NOT the project env): only the standard library
and cellprofiler_core / cellprofiler are imported, never cpp_dagster::

    /path/to/cpvenv/bin/python inspect_pipeline.py PIPELINE.cppipe OUT.json

Writes one JSON object to OUT.json (the project side, `cpp_dagster.analysis.pipeline_check`,
compares it with an acquisition's channel map):

- `modules`: every module block of the file, in file order: `number` (its position
  in the file, as CellProfiler numbers modules), `name`, `enabled` (as saved) and
  `error` (null when CellProfiler built the module; otherwise why not: headless
  CellProfiler only logs this and leaves the module out).
- `load_error`: the file as a whole could not be read (null otherwise).
- `image_inputs`: the names of the enabled input modules (LoadData, Images,
  NamesAndTypes, ...).
- `needs_images`: image name -> the modules that use it before any module of the
  pipeline made it (what the input module has to provide).
- `exports`: per enabled ExportToSpreadsheet, `everything` ("Export all measurement
  types?") and `tables` (its explicit list: Image, Experiment, object names).
"""

from __future__ import annotations

import json
import logging
import sys

INPUT_MODULES = {"LoadData", "Images", "Metadata", "NamesAndTypes", "Groups"}
UNSET = {"", "None", "Do not use", "Leave blank"}


def _headless() -> None:
    from cellprofiler_core.preferences import set_awt_headless, set_headless

    set_headless()
    set_awt_headless(True)


def _label(number: int, name: str) -> str:
    return f"{name} #{number}"


def load(path: str):
    """(pipeline, module blocks of the file, the module -> file number map, load error).
    CellProfiler stops loading at the first module it cannot build unless a listener
    lets it continue: this one does, and records which block failed and why."""
    from cellprofiler_core.pipeline import LoadException, Pipeline

    pipeline = Pipeline()
    blocks: list[dict] = []
    numbers: dict[int, int] = {}
    pending: list[dict] = []  # the block being built, until it is built or fails
    build = pipeline.setup_module

    def setup_module(attribute_string, module_name, module_number, settings, skip_attributes):
        block = {
            "number": len(blocks) + 1,
            "name": module_name,
            "enabled": "|enabled:False|" not in attribute_string,
            "error": None,
        }
        blocks.append(block)
        pending[:] = [block]
        module = build(attribute_string, module_name, module_number, settings, skip_attributes)
        pending.clear()
        numbers[id(module)] = block["number"]
        return module

    def listener(_pipeline, event):
        if isinstance(event, LoadException):
            if pending:
                block = pending.pop()
            else:  # the block's text could not even be parsed
                block = {"number": len(blocks) + 1, "name": event.module_name or "?", "enabled": True}
                blocks.append(block)
            block["error"] = f"{type(event.error).__name__}: {event.error}"
            event.cancel_run = False  # go on with the next module, to list every failure

    pipeline.setup_module = setup_module
    pipeline.add_listener(listener)
    try:
        pipeline.load(path)
    except Exception as e:  # noqa: BLE001 - reported, the caller turns it into a readable refusal
        return pipeline, blocks, numbers, f"{type(e).__name__}: {e}"
    return pipeline, blocks, numbers, None


def image_names(setting) -> list[str]:
    value = setting.value
    names = value if isinstance(value, (list, tuple)) else [value]
    return [str(n) for n in names if str(n) not in UNSET]


def inspect(path: str) -> dict:
    from cellprofiler_core.setting.subscriber import ImageListSubscriber, ImageSubscriber
    from cellprofiler_core.setting.text import Name

    pipeline, blocks, numbers, load_error = load(path)
    enabled = [m for m in pipeline.modules(False) if m.enabled]
    needs: dict[str, list[str]] = {}
    made: set[str] = set()
    exports = []
    for module in enabled:
        label = _label(numbers.get(id(module), module.module_num), module.module_name)
        settings = module.visible_settings()
        if module.module_name not in INPUT_MODULES:
            for setting in settings:
                if isinstance(setting, (ImageSubscriber, ImageListSubscriber)):
                    for name in image_names(setting):
                        if name not in made:
                            needs.setdefault(name, []).append(label)
        if module.module_name != "LoadData":  # LoadData's providers come from its CSV, given at run time
            made.update(module.other_providers("imagegroup"))
        made.update(
            name for s in settings if isinstance(s, Name) and s.get_group() == "imagegroup" for name in image_names(s)
        )
        if module.module_name == "ExportToSpreadsheet":
            exports.append(
                {
                    "module": label,
                    "everything": bool(module.wants_everything.value),
                    "tables": [str(g.name.value) for g in module.object_groups],
                }
            )
    return {
        "modules": blocks,
        "load_error": load_error,
        "image_inputs": sorted({m.module_name for m in enabled if m.module_name in INPUT_MODULES}),
        "needs_images": needs,
        "exports": exports,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    _headless()
    result = inspect(argv[0])
    with open(argv[1], "w", encoding="utf-8") as out:
        json.dump(result, out, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
