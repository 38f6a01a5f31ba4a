"""Download and unpack LibriSpeech subsets (OpenSLR 12) for ``data=librispeech``.

    python scripts/download_librispeech.py --root /datasets --subsets dev-clean test-clean
    mmtrain fit ... data=librispeech data.root=/datasets

Each subset's tarball is fetched from ``<mirror>/<subset>.tar.gz``, checked against the md5 sum
that OpenSLR publishes, and unpacked into ``<root>/LibriSpeech/<subset>`` (the tarball's own
layout; the corpus notes ``README.TXT``, ``SPEAKERS.TXT``... go to ``<root>/LibriSpeech/``).
A subset already there is skipped. Each tarball is unpacked into a scratch folder under
``root`` first and moved into place at the end, so an interrupted run leaves no half-filled
subset that a rerun would skip; a member that would land outside the scratch folder (an
absolute path, ``..``, a link) stops the run. Only the standard library is used.

Sizes: dev-clean 337M, dev-other 314M, test-clean 346M, test-other 328M, train-clean-100 6.3G,
train-clean-360 23G, train-other-500 30G; unpacking needs about as much again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

MIRROR = "https://www.openslr.org/resources/12"
# The md5 sums listed on https://www.openslr.org/12 for the tarballs.
MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}
ARCHIVE_FOLDER = "LibriSpeech"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download, checksum or archive problem, printed without a traceback."""


def check_member(member: tarfile.TarInfo, dest: Path) -> Path:
    """Where ``member`` would be written under ``dest``, if that is safe.

    Args:
        member: a tar member.
        dest: the folder the archive is extracted into.

    Returns:
        The member's target path.

    Raises:
        DownloadError: for an absolute name, a name that leaves ``dest`` (``..``), a link or
            a device file: LibriSpeech tarballs hold only plain files and folders.
    """
    name = member.name
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise DownloadError(f"unsafe archive member {name!r}: an absolute path")
    root = dest.resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise DownloadError(f"unsafe archive member {name!r}: it leaves {dest}")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f"unsafe archive member {name!r}: not a plain file or folder")
    return target


def extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, checking each member with :func:`check_member` first.

    The archive is read once, as a stream (a 30 GB tarball is not decompressed twice). On an
    unsafe member extraction stops: what came before it stays in ``dest``, which the caller
    (a scratch folder) removes.

    Raises:
        DownloadError: for an unsafe member or an unreadable archive.
    """
    # Python's own "data" filter (3.11.4+) as a second line of defence.
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                check_member(member, dest)
                tar.extract(member, dest, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"cannot unpack {archive}: {err}") from None


def md5sum(path: Path) -> str:
    """The md5 hex digest of a file."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, path: Path) -> None:
    """Fetch ``url`` into ``path`` through ``path.part``, printing progress.

    Raises:
        DownloadError: if the server cannot be reached or the transfer fails.
    """
    part = path.with_name(path.name + ".part")
    print(f"fetching {url}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -1
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                percent = 100 * done // total if total else -1
                if percent >= shown + 5:  # a line every 5%, readable in logs
                    shown = percent
                    print(f"  {done >> 20} MiB / {total >> 20} MiB ({percent}%)", flush=True)
    except OSError as err:  # URLError, HTTPError and socket errors are OSErrors
        raise DownloadError(f"cannot download {url}: {err}") from None
    os.replace(part, path)


def present(root: Path, subset: str) -> Path | None:
    """The subset's folder if it is already unpacked (as the data set looks for it)."""
    for folder in (root / ARCHIVE_FOLDER / subset, root / subset):
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    return None


def fetch_subset(root: Path, subset: str, mirror: str, md5: str | None, keep: bool) -> Path:
    """Download, verify and unpack one subset into ``root/LibriSpeech/<subset>``.

    Returns:
        The subset's folder.

    Raises:
        DownloadError: for a failed download, a wrong checksum or an unsafe archive.
    """
    archive = root / f"{subset}.tar.gz"
    if not archive.is_file():
        download(f"{mirror.rstrip('/')}/{subset}.tar.gz", archive)
    if md5 is not None:
        print(f"checking {archive.name}", flush=True)
        got = md5sum(archive)
        if got != md5:
            archive.unlink()  # a rerun downloads it again
            raise DownloadError(
                f"{archive.name}: md5 {got} is not OpenSLR's {md5}; the corrupt file was "
                "removed, run again (or use another --mirror)"
            )
    scratch = root / f".unpack-{subset}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"unpacking {archive.name}", flush=True)
    try:
        extract(archive, scratch)
        unpacked = scratch / ARCHIVE_FOLDER / subset
        if not unpacked.is_dir():
            raise DownloadError(f"{archive.name} holds no {ARCHIVE_FOLDER}/{subset}/ folder")
        target = root / ARCHIVE_FOLDER / subset
        target.parent.mkdir(parents=True, exist_ok=True)
        for note in (scratch / ARCHIVE_FOLDER).iterdir():  # README.TXT, SPEAKERS.TXT...
            if note.is_file() and not (target.parent / note.name).exists():
                os.replace(note, target.parent / note.name)
        os.replace(unpacked, target)  # same file system: atomic
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not keep:
        archive.unlink()
    return target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(
        description="Download LibriSpeech subsets from OpenSLR into ROOT/LibriSpeech/<subset>.",
        epilog="Then: mmtrain fit ... data=librispeech data.root=ROOT",
    )
    parser.add_argument("--root", type=Path, required=True, help="where LibriSpeech/ goes")
    parser.add_argument(
        "--subsets",
        nargs="+",
        choices=sorted(MD5),
        default=["dev-clean", "test-clean"],
        metavar="SUBSET",
        help=f"subsets to fetch, of {', '.join(MD5)} (default: dev-clean test-clean)",
    )
    parser.add_argument(
        "--mirror", default=MIRROR, help=f"base URL of the tarballs (default: {MIRROR})"
    )
    parser.add_argument(
        "--md5",
        action="append",
        default=[],
        metavar="SUBSET=HASH",
        help="replace a built-in md5 sum (repeatable); HASH 'none' skips the check",
    )
    parser.add_argument(
        "--keep-archives", action="store_true", help="keep the .tar.gz files after unpacking"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Fetch the requested subsets; 0 on success, 1 with a one-line error otherwise."""
    args = parse_args(argv)
    sums: dict[str, str | None] = dict(MD5)
    for entry in args.md5:
        subset, sep, value = entry.partition("=")
        if not sep or subset not in MD5:
            print(f"error: --md5 {entry!r}: expected SUBSET=HASH with SUBSET of {list(MD5)}")
            return 1
        sums[subset] = None if value.lower() == "none" else value.lower()
    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    try:
        for subset in dict.fromkeys(args.subsets):
            folder = present(root, subset)
            if folder is not None:
                print(f"have {folder}")
                continue
            folder = fetch_subset(root, subset, args.mirror, sums[subset], args.keep_archives)
            print(f"ready {folder}")
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun to continue (finished subsets are kept)", file=sys.stderr)
        return 130
    print(f"data.root={root.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
