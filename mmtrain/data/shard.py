"""``mmtrain shard <data preset> out=<dir> [overrides]``: write a data set as webdataset shards.

The data preset is composed as ``mmtrain fit data=<preset> [overrides]`` composes it (so
``data.root=...``, ``data.dataset.year=2014`` and ``data.train=...`` work as there), and each
of its splits that opens (train, val, test) is written to ``<dir>/<split>/`` in the layout that
``data=webdataset`` reads (see :mod:`mmtrain.data.webdataset`): every column the data set has,
files byte for byte. Options (``shard.<key>=<value>``):

    maxcount     samples per shard (10000)
    maxsize      bytes per shard, about (1e9)
    splits       the splits to write, e.g. [train,val] (default: those that open)
    num_workers  processes reading the data set (0: this one)
    overwrite    replace the shards in a non-empty out= (true/false; false)

``data.on_error=skip`` leaves bad samples out (counted, within ``data.max_skipped``), as
training does. Nothing appears in ``out`` before every split is written.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmtrain.contracts import SPLITS

USAGE = "usage: mmtrain shard <data preset> out=<dir> [data.key=value ...] [shard.key=value ...]"
# name -> (parser, default)
OPTIONS: dict[str, tuple[Any, Any]] = {
    "maxcount": (int, 10000),
    "maxsize": (float, 1e9),
    "splits": (list, None),
    "num_workers": (int, 0),
    "overwrite": (bool, False),
}
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class UsageError(Exception):
    """A command line that is not ``mmtrain shard <preset> out=<dir> ...``."""


def _option(key: str, text: str) -> Any:
    kind = OPTIONS[key][0]
    try:
        if kind is bool:
            if text.lower() not in (*_TRUE, *_FALSE):
                raise ValueError
            return text.lower() in _TRUE
        if kind is list:
            names = [s.strip() for s in text.strip("[]").split(",") if s.strip()]
            unknown = [s for s in names if s not in SPLITS]
            if not names or unknown:
                raise ValueError
            return names
        value = float(text)
        if kind is int:
            if value != int(value):
                raise ValueError
            value = int(value)
        if value < (1 if key in ("maxcount", "maxsize") else 0):
            raise ValueError
        return value
    except ValueError:
        want = {
            bool: "true or false",
            list: f"a list of splits from {list(SPLITS)}",
            int: "an integer" + (" >= 1" if key == "maxcount" else " >= 0"),
            float: "a number > 0",
        }[kind]
        raise UsageError(f"shard.{key}={text!r}: expected {want}") from None


def parse(argv: list[str]) -> tuple[str, Path, dict[str, Any], list[str]]:
    """``(preset, out, options, overrides)`` of the command line after ``shard``.

    Raises:
        UsageError: for a missing preset or ``out=``, or an unknown or bad ``shard.`` option.
    """
    if not argv or "=" in argv[0] or argv[0].startswith("-"):
        raise UsageError("the first argument is the data preset, e.g. mmtrain shard coco_caption")
    preset, options, overrides, out = argv[0], {k: d for k, (_, d) in OPTIONS.items()}, [], None
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if key == "out" and eq:
            out = Path(value).expanduser()
        elif key.startswith("shard.") and eq:
            name = key[len("shard.") :]
            if name not in OPTIONS:
                close = difflib.get_close_matches(name, list(OPTIONS), n=1)
                hint = f"; did you mean 'shard.{close[0]}'?" if close else ""
                raise UsageError(f"unknown option '{key}'{hint} (options: {', '.join(OPTIONS)})")
            options[name] = _option(name, value)
        else:
            overrides.append(arg)
    if out is None or not str(out):
        raise UsageError("out=<dir> is required: the folder to write the shards into")
    return preset, out, options, overrides


def main(argv: list[str]) -> int:
    """Entry point of ``mmtrain shard``.

    Returns:
        0 once the shards are written.

    Raises:
        SystemExit: 2 for a bad command line, 1 for bad input (one line on stderr), as the
            other stages exit.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.split(chr(10), 2)[2].strip()}")
        if not argv:
            sys.exit(2)
        return 0
    try:
        preset, out, options, overrides = parse(argv)
    except UsageError as err:
        print(f"mmtrain shard: {err}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    from mmtrain.errors import MMTrainError

    try:
        check_out(out, options["overwrite"])
        cfg = compose(preset, overrides)
        write(cfg, preset, out, options)
    except MMTrainError as err:
        print(f"mmtrain shard: error: {err}", file=sys.stderr)
        sys.exit(1)
    return 0


# ---- the output folder ----------------------------------------------------------------------
def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder (unless ``overwrite`` and it
    holds shards that ``mmtrain shard`` wrote).

    Raises:
        MMTrainError: naming ``out``.
    """
    from mmtrain.data.webdataset import META
    from mmtrain.errors import MMTrainError

    if out.exists() and not out.is_dir():
        raise MMTrainError(f"out={out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise MMTrainError(
            f"out={out} is not empty: nothing was written; choose an empty or new folder, or "
            "set shard.overwrite=true to replace the shards in it"
        )
    if not (out / META).is_file():
        raise MMTrainError(
            f"out={out} is not empty and holds no shards written by mmtrain shard (no {META}): "
            "nothing was written; shard.overwrite=true only replaces such shards"
        )


# ---- the config ----------------------------------------------------------------------------------
def compose(preset: str, overrides: list[str]) -> Any:
    """The config of ``mmtrain fit data=<preset> <overrides>``.

    Raises:
        MMTrainError: for an unknown preset, an override that does not apply, or a data
            preset without a single data set.
    """
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mmtrain.config import compose, config_dir, suggest_keys
    from mmtrain.errors import MMTrainError

    presets = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))
    if preset not in presets and not any(o.startswith("hydra.searchpath") for o in overrides):
        close = difflib.get_close_matches(preset, presets, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise MMTrainError(
            f"unknown data preset {preset!r}{hint} (choose from {', '.join(presets)})"
        )
    try:
        cfg = compose("fit", [f"data={preset}", *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0]
        hints = suggest_keys("fit", [f"data={preset}", *overrides])
        if hints:  # "mmtrain: unknown key 'data.rot'; did you mean 'data.root'?"
            message = f"{message.rstrip('.')}: {hints[0].removeprefix('mmtrain: ')}"
        raise MMTrainError(message) from None
    data = cfg.data
    if "dataset" not in data:
        raise MMTrainError(
            f"data={preset} has no single data set (data.dataset); shard each of its data sets "
            "with its own preset"
        )
    # a ??? value is not "in" its node: ask each key
    missing = [
        f"data.{k}" for k in ("root", "train", "val", "test") if OmegaConf.is_missing(data, k)
    ]
    if missing:
        raise MMTrainError(f"missing values (set them with key=value): {', '.join(missing)}")
    return cfg


# ---- writing ------------------------------------------------------------------------------------
def write(cfg: Any, preset: str, out: Path, options: dict[str, Any]) -> None:
    """Write every split into a folder inside ``out``, then move them into place.

    Raises:
        MMTrainError: for a data set that does not open or a bad sample (``data.on_error``),
            before anything in ``out`` changed.
    """
    from mmtrain.data.datamodule import split_kwargs
    from mmtrain.data.webdataset import FORMAT, META, VERSION
    from mmtrain.errors import MMTrainError
    from mmtrain.utils.instantiate import safe_instantiate

    data = cfg.data
    factory = safe_instantiate(data.dataset, "data.dataset", list(cfg.get("allowed_targets") or []))
    target = getattr(factory, "func", factory)
    if not hasattr(target, "__getitem__"):
        raise MMTrainError(f"data={preset}: its data set {target.__name__} has no samples to shard")
    try:
        kwargs = split_kwargs(
            factory, data.get("root"), data.get("train"), data.get("val"), data.get("test")
        )
        prepare = getattr(target, "prepare_data", None)
        if prepare is not None:  # generated data sets (shapes) write their files first
            root = {k: v for k, v in kwargs.items() if k == "root"}
            prepare(**{**getattr(factory, "keywords", {}), **root})
    except ValueError as err:  # MMTrainError is one: bad data; others: bad data.dataset keys
        raise (
            err if isinstance(err, MMTrainError) else MMTrainError(f"data.dataset: {err}")
        ) from None
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".mmtrain-shard-{os.getpid()}"  # on out's disk: the final moves are renames
    lines, written = [], {}
    first_error: MMTrainError | None = None
    try:
        tmp.mkdir()
        for split in options["splits"] or SPLITS:
            try:
                dataset = factory(split=split, columns=None, **kwargs)
            except (ValueError, TypeError) as err:  # MMTrainError: data; others: data.dataset
                if not isinstance(err, MMTrainError):
                    err = MMTrainError(f"data.dataset: {err}")
                first_error = first_error or err
                if options["splits"]:  # asked for: an error
                    raise err from None
                lines.append(f"mmtrain shard: {split}: skipped ({err})")
                continue
            if hasattr(dataset, "optional"):  # a copy: a sample keeps the values it has
                dataset.optional = set(getattr(dataset, "columns", ()) or ())
            index, line = write_split(dataset, split, tmp / split, options, data)
            written[split] = index
            lines.append(f"mmtrain shard: {line}")
        if not written:  # none opened: the first one's error says why
            raise first_error
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "data": preset,
            "dataset": f"{target.__module__}.{target.__qualname__}",
            "splits": {
                s: {"count": i["count"], "shards": len(i["shards"])} for s, i in written.items()
            },
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        _replace(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    for line in lines:
        print(line, flush=True)
    print(f"mmtrain shard: wrote {out} (data=webdataset data.root={out})", flush=True)


def _replace(out: Path, tmp: Path) -> None:
    """Move the new shards from ``tmp`` into ``out``, after removing the old ones (those that
    an earlier ``meta.json`` there lists, and that file): other files in ``out`` stay."""
    from mmtrain.data.webdataset import META

    old = out / META
    if old.is_file():
        try:
            splits = list(json.loads(old.read_text()).get("splits", {}))
        except (OSError, ValueError, AttributeError):
            splits = []
        for name in {*splits, *(p.name for p in tmp.iterdir())} - {META}:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        old.unlink()
    for entry in tmp.iterdir():
        os.replace(entry, out / entry.name)
    tmp.rmdir()


def write_split(
    dataset: Any, split: str, folder: Path, options: dict[str, Any], data: Any
) -> tuple[dict[str, Any], str]:
    """Write one split: its shards, ``index.json`` and ``values.json``.

    Returns:
        The index and the split's summary line.

    Raises:
        MMTrainError: for a bad sample (``data.on_error=raise``, or over ``data.max_skipped``)
            or a value that cannot be stored.
    """
    from webdataset import ShardWriter

    from mmtrain.data.bad_samples import BadSample, BadSamplePolicy
    from mmtrain.data.webdataset import FILE_KINDS, FORMAT, INDEX, VALUES, VERSION
    from mmtrain.errors import MMTrainError

    folder.mkdir(parents=True)
    size = len(dataset)
    if size == 0:
        raise MMTrainError(f"the {split} split has no samples")
    policy = BadSamplePolicy(
        split, size, data.get("on_error", "raise"), data.get("max_skipped", 0.01), {}
    )
    shards: list[dict[str, Any]] = []
    kinds: dict[str, str] = {}
    files = {"original": 0, "re-encoded": 0}
    errors: list[str] = []
    count = 0

    def finished(name: str) -> None:
        shards.append(
            {"url": Path(name).name, "count": writer.count, "bytes": Path(name).stat().st_size}
        )
        if sys.stderr.isatty():  # progress, for data sets that take hours
            done = sum(s["count"] for s in shards)
            print(f"mmtrain shard: {split}: {done}/{size} samples", file=sys.stderr, flush=True)

    pattern = str(folder / "shard-%06d.tar")
    writer = ShardWriter(
        pattern,
        maxcount=options["maxcount"],
        maxsize=options["maxsize"],
        post=finished,
        verbose=0,
        encoder=False,
    )
    with writer:
        for result in _encoded(dataset, options["num_workers"]):
            if isinstance(result, BadSample):
                errors.append(result.error)
                policy.check(len(errors), errors)
                continue
            if isinstance(result, str):  # a value that cannot be stored: always an error
                raise MMTrainError(result)
            fields, sample_kinds, how = result
            for column, kind in sample_kinds.items():
                if kinds.setdefault(column, kind) != kind:
                    raise MMTrainError(
                        f"sample {count}: column {column!r} holds a {kind} "
                        f"here and a {kinds[column]} in earlier samples"
                    )
            for original in how:
                files["original" if original else "re-encoded"] += 1
            writer.write({"__key__": f"{count:09d}", **fields})
            count += 1
    shards = [s for s in shards if s["count"]]  # a last shard opened for no sample
    for name in {p.name for p in folder.glob("shard-*.tar")} - {s["url"] for s in shards}:
        (folder / name).unlink()
    if count == 0:
        raise MMTrainError(f"the {split} split has no good samples ({len(errors)} skipped)")
    columns = list(getattr(dataset, "columns", None) or sorted(kinds))
    values = {}
    for column in columns:
        if column in kinds and kinds[column] in FILE_KINDS:
            continue
        try:
            values[column] = [_plain(v) for v in dataset.values(column)]
        except (AttributeError, MMTrainError, TypeError):  # no values() for it: not stored
            continue
    index = {
        "format": FORMAT,
        "version": VERSION,
        "split": split,
        "count": count,
        "skipped": len(errors),
        "columns": columns,
        "kinds": {c: k for c, k in kinds.items() if k in FILE_KINDS},
        "shards": shards,
    }
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (folder / VALUES).write_text(json.dumps(values) + "\n")
    megabytes = sum(s["bytes"] for s in shards) / 1e6
    stored = ", ".join(f"{n} {k}" for k, n in files.items() if n) or "none"
    line = (
        f"{split}: {count} samples in {len(shards)} shards ({megabytes:.1f} MB), columns "
        f"{', '.join(columns)}; files: {stored}"
        + (f"; {len(errors)} bad samples skipped" if errors else "")
    )
    return index, line


def _plain(value: Any) -> Any:
    """A value as JSON stores it (tuples as lists, numpy scalars as numbers)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


# ---- one sample -> tar members ------------------------------------------------------------------
def _encoded(dataset: Any, num_workers: int) -> Iterator[Any]:
    """:class:`SampleEncoder`'s results for every sample, in order."""
    encoder = SampleEncoder(dataset)
    if num_workers == 0:
        for i in range(len(dataset)):
            yield encoder[i]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(encoder, batch_size=None, num_workers=num_workers, collate_fn=_as_is)
    yield from loader


def _as_is(result: Any) -> Any:
    return result


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """The files that PIL and soundfile open in the block (what the data set's loaders read)."""
    import soundfile
    from PIL import Image

    opened: list[str] = []
    pil_open, sf_read = Image.open, soundfile.read

    def record(fp: Any) -> None:
        if isinstance(fp, (str, os.PathLike)) and os.fspath(fp) not in opened:
            opened.append(os.fspath(fp))

    def open_image(fp: Any, *args: Any, **kwargs: Any) -> Any:
        record(fp)
        return pil_open(fp, *args, **kwargs)

    def read_audio(file: Any, *args: Any, **kwargs: Any) -> Any:
        record(file)
        return sf_read(file, *args, **kwargs)

    Image.open, soundfile.read = open_image, read_audio
    try:
        yield opened
    finally:
        Image.open, soundfile.read = pil_open, sf_read


class SampleEncoder:
    """Sample ``i`` of a data set as tar members: ``(fields, kinds, original?)``, a
    :class:`~mmtrain.data.bad_samples.BadSample`, or the error (a string) of a value that
    cannot be stored.

    A file column's value is stored as the file the data set read it from (found among the
    files opened while loading the sample), byte for byte, when decoding those bytes as
    ``data=webdataset`` does gives the same value; else it is re-encoded losslessly (images as
    PNG, ``uint8`` masks as PNG, other arrays as ``.npy``, audio as ``.npz``) and checked too.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.verified: dict[tuple[str, str], bool] = {}  # (kind, file): decodes to the value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        from mmtrain.data.bad_samples import BadSample
        from mmtrain.errors import MMTrainError

        with opened_files() as opened:
            try:
                item = self.dataset[i]
            except MMTrainError as err:
                return BadSample(i, str(err))
        try:
            return self._fields(item, opened)
        except MMTrainError as err:
            return str(err)

    def _fields(self, item: dict[str, Any], opened: list[str]) -> tuple[dict, dict, list]:
        from mmtrain.errors import MMTrainError

        sample_id = item.get("id")
        fields: dict[str, bytes] = {}
        kinds: dict[str, str] = {}
        how: list[bool] = []
        for column, value in item.items():
            if "." in column or not column:
                raise MMTrainError(
                    f"sample {sample_id}: column {column!r}: not a name for a tar member"
                )
            kind = _kind(value)
            if kind == "text":
                fields[f"{column}.txt"] = value.encode("utf-8")
                continue
            if kind == "value":
                try:
                    fields[f"{column}.json"] = json.dumps(_plain(value)).encode("utf-8")
                except (TypeError, ValueError) as err:
                    raise MMTrainError(
                        f"sample {sample_id}: column {column!r}: cannot store a "
                        f"{type(value).__name__} ({err})"
                    ) from None
                continue
            ext, data, original = self._file(kind, value, opened, f"sample {sample_id}: {column}")
            fields[f"{column}.{ext}"] = data
            kinds[column] = kind
            how.append(original)
        return fields, kinds, how

    def _file(
        self, kind: str, value: Any, opened: list[str], where: str
    ) -> tuple[str, bytes, bool]:
        from mmtrain.data.webdataset import decode_field
        from mmtrain.errors import MMTrainError

        for path in opened:
            ext = Path(path).suffix.lower().lstrip(".")
            if not ext.isalnum() or ext in ("txt", "json", "npy", "npz"):
                ext = "bin"
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            key = (kind, path)
            if key not in self.verified:
                try:
                    self.verified[key] = _same(kind, decode_field(kind, ext, data, path), value)
                except MMTrainError:
                    self.verified[key] = False
            if self.verified[key]:
                return ext, data, True
        ext, data = _reencode(kind, value)
        try:
            same = _same(kind, decode_field(kind, ext, data, where), value)
        except MMTrainError:
            same = False
        if not same:
            raise MMTrainError(f"{where}: cannot store this {kind} losslessly ({_describe(value)})")
        return ext, data, False


def _kind(value: Any) -> str:
    import numpy as np
    from PIL import Image

    if isinstance(value, str):
        return "text"
    if isinstance(value, Image.Image):
        return "image"
    if isinstance(value, np.ndarray):
        return "array"
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], np.ndarray)
        and isinstance(value[1], int)
    ):
        return "audio"
    return "value"


def _same(kind: str, a: Any, b: Any) -> bool:
    import numpy as np

    if kind == "image":
        return (a.mode, a.size) == (b.mode, b.size) and a.tobytes() == b.tobytes()
    if kind == "audio":
        (a, rate_a), (b, rate_b) = a, b
        return rate_a == rate_b and a.dtype == b.dtype and np.array_equal(a, b)
    return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)


def _reencode(kind: str, value: Any) -> tuple[str, bytes]:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    if kind == "image":
        value.save(buffer, format="PNG")
        return "png", buffer.getvalue()
    if kind == "audio":
        samples, rate = value
        np.savez(buffer, samples=samples, rate=np.int64(rate))
        return "npz", buffer.getvalue()
    if value.dtype == np.uint8 and value.ndim == 2:  # a mask of class ids
        Image.fromarray(value).save(buffer, format="PNG")  # mode L
        return "png", buffer.getvalue()
    np.save(buffer, value, allow_pickle=False)
    return "npy", buffer.getvalue()


def _describe(value: Any) -> str:
    if hasattr(value, "mode"):
        return f"mode {value.mode}, size {value.size}"
    if isinstance(value, tuple):
        return f"{value[0].dtype} samples {value[0].shape} at {value[1]} Hz"
    return f"{value.dtype} {value.shape}"
