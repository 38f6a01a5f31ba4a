"""What the loggers get besides metrics: a stable wandb run id, the config and the git commit.

``build_trainer`` calls :func:`prepare_logger_node` for each ``logger.<name>`` node (extra
constructor arguments, e.g. the wandb run id kept in the run directory) and :func:`log_run_info`
once the trainer holds its loggers. Importing this module imports neither wandb nor mlflow: they
are imported when a logger of theirs is first used.
"""

from __future__ import annotations

import csv
import json
import netrc
import os
import secrets
import string
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from mmtrain.utils.instantiate import check_allowed

WANDB_ID_FILE = "wandb_run_id.txt"  # in the run directory: a resumed run logs to the same run
MLFLOW_MAX_PARAM_LENGTH = 250  # Lightning's MLFlowLogger cuts values here; we mark the cut
GIT_TIMEOUT_S = 5.0


def wandb_logged_in() -> bool:
    """Whether wandb has credentials: ``WANDB_API_KEY``, or a netrc entry for its API host.

    The host is that of ``WANDB_BASE_URL`` (default ``https://api.wandb.ai``); the netrc file is
    ``$NETRC`` or ``~/.netrc``, as wandb reads them.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):  # no file, unreadable or malformed: no login
        return False
    return bool(entry and entry[2])


class AutoOfflineWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` that goes offline unless wandb has credentials.

    It also finishes its wandb run when Lightning finalizes the logger, so that the next stage
    or sweep job in the same process starts (or, with the same ``id``, resumes) its own run
    instead of silently reusing this one.

    Args:
        name: the run's display name.
        save_dir: where wandb writes its ``wandb/`` folder.
        project: the wandb project.
        offline: ``None`` (auto): offline unless :func:`wandb_logged_in`; True or False forces it.
        id: the run id; with ``resume="allow"`` (Lightning's default) an existing run continues.
        log_model: upload checkpoints (not possible offline).
        prefix: prefix of every metric key.
        **kwargs: more ``WandbLogger`` / ``wandb.init`` arguments (``tags``, ``entity``...).
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        project: str | None = None,
        offline: bool | None = None,
        id: str | None = None,  # noqa: A002 - wandb's name
        log_model: bool | str = False,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name=name,
            save_dir=save_dir,
            project=project,
            offline=(not wandb_logged_in()) if offline is None else offline,
            id=id,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:  # wandb warns about the unset option
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Upload what Lightning uploads, then finish the wandb run (resumable by its id)."""
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._wandb_init["id"] = getattr(self._experiment, "id", None) or self._id
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


class FileStoreMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` that also works with MLflow's local file store.

    The file store (a ``file:`` tracking URI, or a plain path) keeps each metric in a file named
    by its key, so ``train/loss`` (a file) and ``train/loss/label`` (a folder) cannot both be
    stored: there, ``/`` in metric keys becomes ``.`` (``train.loss.label``); a tracking server
    or database gets the keys unchanged. MLflow >= 3 also refuses the file store unless
    ``MLFLOW_ALLOW_FILE_STORE`` is set: it is set to ``true`` unless the user set it.

    Args:
        experiment_name: the MLflow experiment (created if missing).
        tracking_uri: where runs are stored; default ``$MLFLOW_TRACKING_URI``, else
            ``file:<save_dir>``.
        save_dir: the file store when no tracking URI is given.
        run_name: the MLflow run's name.
        **kwargs: more ``MLFlowLogger`` arguments (``tags``, ``log_model``, ``run_id``...).
    """

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        tracking_uri: str | None = None,
        save_dir: str = "./mlruns",
        run_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"file:{save_dir}"
        self._file_store = uri.startswith("file:") or not urlparse(uri).scheme
        if self._file_store:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(
            experiment_name=experiment_name, tracking_uri=uri, run_name=run_name, **kwargs
        )

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics; on the file store with ``/`` in their keys replaced by ``.``."""
        if self._file_store:
            metrics = {k.replace("/", "."): v for k, v in metrics.items()}
        super().log_metrics(metrics, step)


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits  # wandb's own id alphabet and length
    return "".join(secrets.choice(alphabet) for _ in range(8))


def wandb_run_id(output_dir: str | Path) -> str:
    """The wandb run id of a run directory: read from ``wandb_run_id.txt``, or created there.

    The file is created exclusively, so concurrent processes of one run (DDP ranks) agree on
    the id of whichever wrote it first.
    """
    path = Path(output_dir) / WANDB_ID_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("x") as f:
                f.write(_new_run_id() + "\n")
        except FileExistsError:
            pass
    return path.read_text().strip()


def prepare_logger_node(
    name: str, node: DictConfig, output_dir: str | Path, extra_allowed: Iterable[str] = ()
) -> dict[str, Any]:
    """Constructor arguments that ``build_trainer`` adds to the ``logger.<name>`` node.

    A wandb logger without an ``id`` (or ``version``) in its node gets the run directory's id
    (:func:`wandb_run_id`) and ``resume="allow"``: resuming a run directory continues its wandb
    run. Other loggers get nothing.

    Args:
        name: the logger's key under ``logger``.
        node: its config node (with ``_target_``).
        output_dir: the run directory.
        extra_allowed: more allowed ``_target_`` prefixes (checked before anything is imported).

    Returns:
        Keyword arguments for the logger's constructor.

    Raises:
        MMTrainError: if the node's ``_target_`` is not allowed.
    """
    check_allowed(node, f"logger.{name}", extra_allowed)
    target = get_object(str(node._get_node("_target_")._value()))
    if not (isinstance(target, type) and issubclass(target, WandbLogger)):
        return {}
    if node.get("id") or node.get("version"):
        return {}
    return {"id": wandb_run_id(output_dir), "resume": "allow"}


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as ``{"optimizer.lr": 0.001, ...}``: primitives, lists as JSON text.

    Interpolations are resolved where they can be (``${hydra:...}`` needs a Hydra run); if the
    config cannot be resolved as a whole, the unresolved text is kept.
    """
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a Hydra run: log the expressions instead
        data = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple, Mapping)):
            out[key] = json.dumps(value, default=str)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)

    visit(data, "")
    return out


def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    """``{"git.commit": sha, "git.dirty": bool}`` of the repository at ``cwd``, else ``{}``.

    Dirty means tracked files differ from the commit (untracked files do not count). No git,
    no repository, or a git slower than a few seconds: ``{}``.
    """

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": bool(status)}


def _truncate(value: Any, limit: int) -> Any:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_run_info(loggers: Iterable[Logger], cfg: DictConfig) -> dict[str, Any]:
    """Log the flat config and the git commit as hyperparameters to every logger.

    MLflow limits the length of a parameter value: longer values are cut, ending in ``...``.

    Args:
        loggers: the trainer's loggers (``trainer.loggers``; fast_dev_run's dummies ignore it).
        cfg: the composed config.

    Returns:
        The hyperparameters logged (before any truncation).
    """
    params = {**flat_config(cfg), **git_info()}
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.log_hyperparams(
                {k: _truncate(v, MLFLOW_MAX_PARAM_LENGTH) for k, v in params.items()}
            )
        else:
            logger.log_hyperparams(params)
    return params


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted
    (Lightning deletes it when its folder is reused)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # a resumed run: keep its rows and header
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` that continues ``metrics.csv`` when a run
    is resumed in the same run directory (``mmtrain fit ckpt_path=last``), instead of deleting
    the rows of the epochs before the resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
