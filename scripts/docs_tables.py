"""Write docs/reference/groups.md, the table of config groups and presets, from ``configs/``.

    python scripts/docs_tables.py           # (re)write the page
    python scripts/docs_tables.py --check   # exit 1 if the page is out of date (the tests run it)

Each folder of ``configs/`` that holds YAML files is a config group (``encoder/image``); each
file in it is a preset. The page lists, per preset, the ``_target_`` it instantiates (following
the preset's ``defaults`` inside its group; for presets with several nodes, such as loggers and
callbacks, each node's ``_target_``; for ``# @package _global_`` presets, the groups they set)
and the first line of its leading comment. Torch-free: the YAML is read with PyYAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
OUTPUT = ROOT / "docs" / "reference" / "groups.md"
COMMAND = "python scripts/docs_tables.py"

HEADER = f"""# Config groups and presets

<!-- Generated from configs/ by `{COMMAND}`; do not edit by hand.
     `{COMMAND} --check` (run by tests/scripts/test_docs.py) fails when it is out of date. -->

Every folder of `configs/` is a config group and every YAML file in it a preset: choose one with
`group=preset` (`fusion=gated`, `encoder/image=resnet18`), add one the defaults lack with
`+group=preset` (`+head/caption=transformer`), remove one with `~group` (`~encoder/audio`).
The `_target_` column is the class a preset instantiates (for `# @package _global_` presets:
the groups it sets); the last column is the first line of the preset's own comment. The primary
configs (`configs/fit.yaml`, `validate.yaml`, `test.yaml`, `predict.yaml`) are described in
[configuration.md](../configuration.md).
"""


def groups(configs: Path = CONFIGS) -> dict[str, list[Path]]:
    """``{group: [preset files, sorted]}`` for every folder under ``configs`` with YAML files."""
    found: dict[str, list[Path]] = {}
    for path in sorted(configs.rglob("*.yaml")):
        group = path.parent.relative_to(configs).as_posix()
        if group != ".":
            found.setdefault(group, []).append(path)
    return dict(sorted(found.items()))


def first_comment(text: str) -> str:
    """The first comment line of a YAML file, without ``#`` (Hydra's ``@package`` directive and
    empty comment lines skipped); ``""`` if the file has none."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            continue
        comment = stripped.lstrip("#").strip()
        if comment and not comment.startswith("@package"):
            return comment
    return ""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def composed(path: Path, seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """The preset with the presets of its own group that its ``defaults`` name merged in (as
    Hydra does for ``defaults: [coco_caption, _self_]``); other defaults are left as they are."""
    data = _load(path)
    merged: dict[str, Any] = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            parent = path.parent / f"{entry}.yaml"
            if parent.is_file() and parent not in seen:
                merged = _merge(merged, composed(parent, seen | {path}))
    return _merge(merged, {k: v for k, v in data.items() if k != "defaults"})


def _sets(path: Path) -> list[str]:
    """``group=preset`` for each group a ``# @package _global_`` preset chooses."""
    out = []
    for entry in _load(path).get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = str(key).removeprefix("override ").strip().lstrip("/")
                out.append(f"~{group}" if value is None else f"{group}={value}")
    return out


def targets(path: Path) -> list[str]:
    """What the preset instantiates: its ``_target_``, else those of its top-level nodes, else
    (a global preset) the groups it sets."""
    node = composed(path)
    if "_target_" in node:
        return [f"`{node['_target_']}`"]
    nested = [
        f"`{value['_target_']}`"
        for value in node.values()
        if isinstance(value, dict) and "_target_" in value
    ]
    if nested:
        return list(dict.fromkeys(nested))
    if "@package _global_" in path.read_text():
        return [f"`{item}`" for item in _sets(path)]
    return []


def _plain(text: str) -> str:
    for char, sub in (("\\", "\\\\"), ("`", "\\`"), ("|", "\\|"), ("*", "\\*"), ("_", "\\_")):
        text = text.replace(char, sub)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def escape(text: str) -> str:
    """Markdown-safe table cell text; code spans (between backticks) are kept as they are."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        return _plain(text)
    return "`".join(part if i % 2 else _plain(part) for i, part in enumerate(parts))


def render(configs: Path = CONFIGS) -> str:
    """The whole page."""
    lines = [HEADER]
    for group, presets in groups(configs).items():
        lines += [f"## `{group}`", "", "| preset | `_target_` | first comment line |"]
        lines.append("| --- | --- | --- |")
        for path in presets:
            target = ", ".join(targets(path)) or "-"
            comment = escape(first_comment(path.read_text())) or "-"
            lines.append(f"| `{path.stem}` | {target} | {comment} |")
        lines.append("")
    return "\n".join(lines)


def check(output: Path = OUTPUT, configs: Path = CONFIGS) -> str | None:
    """None if ``output`` is what :func:`render` writes, else what is wrong, in one line."""
    if not output.is_file():
        return f"{output.relative_to(ROOT)} is missing: run {COMMAND}"
    if output.read_text() != render(configs):
        return f"{output.relative_to(ROOT)} is out of date with configs/: run {COMMAND}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    if args.check:
        problem = check()
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
