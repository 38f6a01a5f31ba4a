"""Run the ``mmtrain`` command as a user runs it: a subprocess in a scratch directory, with
the data and output roots of the test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def mmtrain_command() -> list[str]:
    """The installed console script next to this interpreter, else the same entry point."""
    script = Path(sys.executable).with_name("mmtrain")
    if script.is_file():
        return [str(script)]
    found = shutil.which("mmtrain")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from mmtrain.cli import main; sys.exit(main())"]


MMTRAIN = mmtrain_command()


def cli_env(data_dir: Path, output_dir: Path) -> dict[str, str]:
    """This environment, with the data and output roots, one thread and no warnings."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(
        MMTRAIN_DATA_DIR=str(data_dir),
        MMTRAIN_OUTPUT_DIR=str(output_dir),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def run_mmtrain(
    args: list[str],
    cwd: Path,
    data_dir: Path,
    output_dir: Path,
    timeout: int = 180,
    command: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """``mmtrain <args>`` (or ``command``) in ``cwd``, its output captured."""
    return subprocess.run(
        [*(command or MMTRAIN), *args],
        cwd=cwd,
        env=cli_env(data_dir, output_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def explain_run(proc: subprocess.CompletedProcess) -> str:
    """The exit status and the ends of stdout and stderr, for an assertion message."""
    out, err = proc.stdout[-3000:], proc.stderr[-3000:]
    return f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def mmtrain(scratch: dict[str, Path], *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``mmtrain <args>`` with a test's ``scratch`` directories (conftest's fixture)."""
    return run_mmtrain(list(args), scratch["cwd"], scratch["data"], scratch["out"], **kwargs)


def run_dirs(root: Path, marker: str) -> list[Path]:
    """Run directories under an output root that hold ``marker`` (a file path inside them)."""
    return sorted(p.parents[len(Path(marker).parts) - 1] for p in root.glob(f"**/{marker}"))
