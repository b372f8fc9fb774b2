"""The registered pipelines as people read them: each pipeline's versions and what each
step needs (`cpp-dagster pipeline list` and `show`, as text or `--json`; the Dagster UI's
`imagedb/analysis_pipelines` observation, as a markdown table). Pure functions over
`ImageDB.registered_pipelines()`.

Every value read from imagedb is shown with its control characters escaped (a name,
file name or `added_by` written by hand cannot move a terminal's cursor or end a table
row), and a long one is cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cpp_dagster.analysis.pipeline_steps import printable as shown
from cpp_dagster.imagedb.pipelines import ADDED_BY_OTHER_MEANS, RegisteredPipeline

_STEP_KEYS_SHOWN_ELSEWHERE = {"type", "pipeline_file", "sub_type"}


def _steps(meta: Any, recorded: list[dict] | None) -> list[dict[str, Any]]:
    subs = meta.get("sub_analyses") if isinstance(meta, dict) else None
    if not isinstance(subs, list):
        return []
    recorded = recorded if isinstance(recorded, list) and len(recorded) == len(subs) else None
    steps = []
    for index, sub in enumerate(subs):
        sub = sub if isinstance(sub, dict) else {}
        found = recorded[index] if recorded is not None and isinstance(recorded[index], dict) else {}
        steps.append(
            {
                "step": index + 1,
                "sub_type": sub.get("sub_type") or "features",
                "pipeline_file": sub.get("pipeline_file"),
                "options": {k: v for k, v in sub.items() if k not in _STEP_KEYS_SHOWN_ELSEWHERE},
                "source": found.get("source"),
                "sha256": found.get("sha256"),
                "needs": found.get("needs"),  # None: never checked (not added by `pipeline add`)
                "compared_with": found.get("compared_with"),
            }
        )
    return steps


def as_dicts(pipelines: Sequence[RegisteredPipeline]) -> list[dict[str, Any]]:
    """Every pipeline with its versions (oldest first) and each version's steps and needs."""
    out = []
    for p in pipelines:
        current = p.current
        versions = [
            {
                "version": v.version,
                "current": current is not None and v.version == current.version,
                "added": v.added.isoformat(timespec="seconds"),
                "added_by": v.added_by,
                "analyses": p.analyses.get(v.version, 0),  # submitted with this version
                "description": (v.meta.get("analysis_meta") or {}).get("description")
                if isinstance(v.meta, dict)
                else None,
                "steps": _steps(v.meta, v.steps),
            }
            for v in p.versions
        ]
        out.append(
            {
                "name": p.name,
                "current_version": None if current is None else current.version,
                "versions": versions,
                "steps": _steps(p.meta, current.steps if current is not None else None),
            }
        )
    return out


def _option(value: Any) -> str:
    """An option as it is typed after `KEY=`: text as is, anything else as JSON (`true`, `[1, 2]`)."""
    return value if isinstance(value, str) else json.dumps(value)


def needs_text(needs: dict[str, Any] | None) -> str:
    if not isinstance(needs, dict):
        return "not checked (registered without `cpp-dagster pipeline add`)"
    parts = [f"channels {', '.join(map(shown, needs.get('channels') or [])) or 'none'}"]
    if needs.get("illumination_files"):
        parts.append(f"illumination files {', '.join(map(shown, needs['illumination_files']))}")
    exports = needs.get("exports")
    parts.append(
        "exports all tables"
        if exports == "all"
        else f"exports {', '.join(map(shown, exports))}"
        if exports
        else "exports no table"
    )
    if needs.get("saves_files"):
        parts.append("saves files")
    return "; ".join(parts)


def _state(pipeline: dict[str, Any]) -> str:
    count = len(pipeline["versions"])
    if pipeline["current_version"] is not None:
        return f"version {pipeline['current_version']} of {count}"
    if count:
        return f"changed in imagedb after version {pipeline['versions'][-1]['version']} (of {count})"
    return "no versions (registered in imagedb directly)"


def _step_line(step: dict[str, Any], full_hash: bool) -> str:
    digest = step["sha256"]
    origin = f"from {shown(step['source'])}, sha256 {digest if full_hash else digest[:12]}" if digest else ""
    file = shown(step["pipeline_file"]) if not digest or full_hash else ""
    where = ", ".join(p for p in (file, origin) if p)
    return f"  step {step['step']} {shown(step['sub_type'])}: {where}\n    needs {needs_text(step['needs'])}"


def list_text(pipelines: Sequence[RegisteredPipeline]) -> str:
    """`cpp-dagster pipeline list`: each pipeline, its current version and its steps' needs."""
    if not pipelines:
        return "no analysis pipelines registered"
    blocks = []
    for p in as_dicts(pipelines):
        latest = p["versions"][-1] if p["versions"] else None
        added = (
            f", added {latest['added'].replace('T', ' ')} by {shown(latest['added_by'] or 'unknown')}" if latest else ""
        )
        lines = [f"{p['name']}  {_state(p)}{added}"]
        lines += [_step_line(step, full_hash=False) for step in p["steps"]]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def show_text(pipeline: RegisteredPipeline) -> str:
    """`cpp-dagster pipeline show NAME`: every version, oldest first, with its steps, their
    files' sha256, options, needs and what the images were compared with."""
    p = as_dicts([pipeline])[0]
    lines = [f"{p['name']}: {_state(p)}"]
    for v in p["versions"]:
        by = (
            shown(v["added_by"] or "unknown")
            if v["added_by"] != ADDED_BY_OTHER_MEANS
            else "written in imagedb directly"
        )
        submitted = f"; {v['analyses']} {'analysis' if v['analyses'] == 1 else 'analyses'} submitted with it"
        lines.append(
            f"version {v['version']}{' (current)' if v['current'] else ''}: added {v['added']} by {by}{submitted}"
        )
        if v["description"]:
            lines.append(f"  {shown(v['description'], 500)}")
        for step in v["steps"]:
            lines.append(_step_line(step, full_hash=True))
            options = ", ".join(f"{shown(k)}={shown(_option(val))}" for k, val in step["options"].items())
            lines.append(f"    options {options or 'none'}")
            if step["needs"] is not None:
                lines.append(f"    images compared with {shown(step['compared_with'] or 'no channel map')}")
    if not p["versions"]:
        lines += [_step_line(step, full_hash=True) for step in p["steps"]]
    return "\n".join(lines)


def _md(text: str) -> str:
    return shown(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(pipelines: Sequence[RegisteredPipeline]) -> str:
    """The UI's table: one row per pipeline step of the current meta."""
    out = ["| pipeline | version | versions | step | file | needs |", "|---|---|---|---|---|---|"]
    for p in as_dicts(pipelines):
        version = "changed in imagedb" if p["current_version"] is None and p["versions"] else p["current_version"] or ""
        for step in p["steps"] or [{"step": "", "sub_type": "", "source": "", "sha256": None, "needs": None}]:
            file = (
                f"{step['source']} ({step['sha256'][:12]})" if step.get("sha256") else step.get("pipeline_file") or ""
            )
            out.append(
                "| "
                + " | ".join(
                    _md(str(c))
                    for c in (
                        p["name"],
                        version,
                        len(p["versions"]),
                        f"{step['step']} {step['sub_type']}".strip(),
                        file,
                        needs_text(step["needs"]) if step["sub_type"] else "",
                    )
                )
                + " |"
            )
    return "\n".join(out)
