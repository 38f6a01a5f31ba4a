"""The bad-input harness: many ``mmtrain`` commands in one process (torch is imported once),
each with its exit code, its output and the digests of the folders it must leave as they
were."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers.cli import explain_run, run_mmtrain

# ---- the harness: one process, every case --------------------------------------------------------
_HARNESS = textwrap.dedent(
    """
    # Runs `mmtrain <argv>` for each case in order in one process (torch is imported once) and
    # reports each call's exit code, stdout and stderr. An exception escaping main() is reported
    # with its traceback, as the console script would print it. After a case, the files of the
    # folders named in its "snapshot" are hashed (the run directory of a real fit, say); a
    # "truncate" step writes the first half of a file that the cases before wrote.
    import contextlib, hashlib, io, json, pathlib, sys, traceback
    from mmtrain.cli import main

    def digest(folder):
        root = pathlib.Path(folder)
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
        }

    results = {}
    for case in json.loads(sys.argv[1]):
        if "truncate" in case:  # a copy of a file the cases wrote, cut in half
            src, dst = map(pathlib.Path, case["truncate"])
            dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
            continue
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(case["argv"])
                code = 0
            except SystemExit as exit_:
                code = exit_.code
                if not isinstance(code, int):  # None: success; a message: failure
                    code = 0 if code is None else 1
            except BaseException:
                traceback.print_exc()
                code = 1
        results[case["name"]] = {
            "code": code,
            "stdout": out.getvalue(),
            "stderr": err.getvalue(),
            "snapshot": {d: digest(d) for d in case.get("snapshot", [])},
        }
    print(json.dumps(results))
    """
)


def digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cases(
    cases: list[dict[str, Any]], tmp: Path, data_dir: Path, output_dir: Path
) -> tuple[dict[str, dict[str, Any]], str]:
    """Run ``cases`` (``{"name", "argv", "snapshot"?}``) in one process.

    Returns:
        The results by case name, and the process's own stdout + stderr (what escaped the
        per-case capture: C libraries, warnings at exit).
    """
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    proc = run_mmtrain(
        [_HARNESS, json.dumps(cases)],
        cwd,
        data_dir,
        output_dir,
        timeout=600,
        command=[sys.executable, "-c"],
    )
    assert proc.returncode == 0, explain_run(proc)
    *before, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join(before) + proc.stderr
