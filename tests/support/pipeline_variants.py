"""Variants of the demo pipeline's text that CellProfiler refuses or that cannot run: a
module left out, a module of a plugin that is not installed put in."""

from __future__ import annotations

import re

RUN_CELLPOSE = """RunCellpose:[module_num:3|svn_version:'Unknown'|variable_revision_number:4|show_window:False|\
notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Select the input image:HOECHST
    Expected object diameter:15
    Detection mode:cyto2
    Name the output object:CellposeNuclei

"""


def module_count(text: str, delta: int) -> str:
    return re.sub(r"^ModuleCount:(\d+)$", lambda m: f"ModuleCount:{int(m.group(1)) + delta}", text, flags=re.M)


def without_module(text: str, name: str) -> str:
    """The pipeline text without the (last) block of module `name`."""
    start = text.index(f"\n{name}:[") + 1
    end = text.find("\n\n", start)
    return module_count(text[:start] + (text[end + 2 :] if end != -1 else ""), -1)


def with_module_before(text: str, block: str, before: str) -> str:
    at = text.index(f"\n{before}:[") + 1
    return module_count(text[:at] + block + text[at:], +1)
