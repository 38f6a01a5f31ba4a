#!/usr/bin/env bash
# Fetch and unpack COCO 2017 captions for mmtrain (mmtrain/data/coco.py, CaptionDataset):
#
#   TARGET/annotations/captions_{train,val}2017.json   (from annotations_trainval2017.zip)
#   TARGET/train2017/*.jpg   118k images, 18 GB
#   TARGET/val2017/*.jpg       5k images,  1 GB
#   TARGET/dataset_coco.json   Karpathy's splits, only when KARPATHY_URL is given
#
# Usage: scripts/download_coco.sh TARGET [KARPATHY_URL]
#
# KARPATHY_URL is a .json file or a .zip holding dataset_coco.json (such as Karpathy's
# caption_datasets.zip). Its entries name the COCO 2014 files; CaptionDataset reads them from
# train2017/ and val2017/ by their cocoid, so the 2014 images are not needed.
#
# Files already there are skipped, so an interrupted run can be started again; a partly
# downloaded zip is resumed. Set KEEP_ZIPS=1 to keep the zips after unpacking (19 GB more).
# COCO_BASE_URL replaces http://images.cocodataset.org (a mirror).
# Needs curl (or wget) and unzip, and about 40 GB free while unpacking.
set -euo pipefail

BASE_URL="${COCO_BASE_URL:-http://images.cocodataset.org}"  # or a mirror

if [[ $# -lt 1 || $# -gt 2 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
KARPATHY_URL="${2:-}"

for tool in unzip; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
if ! command -v curl >/dev/null && ! command -v wget >/dev/null; then
    echo "error: neither curl nor wget is installed" >&2
    exit 1
fi

mkdir -p "$1"
TARGET="$(cd "$1" && pwd)"

# fetch URL FILE: download URL to FILE unless FILE is there, resuming FILE.part.
fetch() {
    local url="$1" file="$2"
    if [[ -s "$file" ]]; then
        echo "have $file"
        return
    fi
    echo "fetching $url"
    if command -v curl >/dev/null; then
        curl -fL --retry 5 --retry-delay 10 -C - -o "$file.part" "$url"
    else
        wget -c -O "$file.part" "$url"
    fi
    mv "$file.part" "$file"
}

# unpack ZIP DEST...: unzip into a scratch folder, then move each top-level DEST into TARGET,
# so an interrupted unzip never leaves a half-filled folder that a rerun would skip.
unpack() {
    local zip="$1" scratch="$TARGET/.unpack.$$"
    shift
    rm -rf "$scratch"
    mkdir -p "$scratch"
    echo "unpacking $zip"
    unzip -q "$zip" -d "$scratch"
    for dest in "$@"; do
        if [[ -d "$scratch/$dest" && -d "$TARGET/$dest" ]]; then
            # annotations/ may already hold other files: add the missing ones only
            cp -Rn "$scratch/$dest/." "$TARGET/$dest/"
        else
            mv "$scratch/$dest" "$TARGET/$dest"
        fi
    done
    rm -rf "$scratch"
    [[ "${KEEP_ZIPS:-0}" == 1 ]] || rm -f "$zip"
}

# get NAME CHECK DEST: fetch and unpack NAME.zip unless CHECK (a file or folder) is there.
get() {
    local name="$1" check="$2" dest="$3"
    if [[ -s "$TARGET/$check" || ( -d "$TARGET/$check" && -n "$(ls -A "$TARGET/$check")" ) ]]; then
        echo "have $TARGET/$check"
        return
    fi
    local zip
    zip="$TARGET/$(basename "$name").zip"
    fetch "$BASE_URL/$name.zip" "$zip"
    unpack "$zip" "$dest"
}

get annotations/annotations_trainval2017 annotations/captions_train2017.json annotations
get zips/val2017 val2017 val2017
get zips/train2017 train2017 train2017

command=(mmtrain fit experiment=coco_caption "data.root=$TARGET")
if [[ -n "$KARPATHY_URL" ]]; then
    split_file="$TARGET/dataset_coco.json"
    if [[ -s "$split_file" ]]; then
        echo "have $split_file"
    elif [[ "$KARPATHY_URL" == *.json ]]; then
        fetch "$KARPATHY_URL" "$split_file"
    else
        fetch "$KARPATHY_URL" "$TARGET/karpathy_splits.zip"
        unzip -q -o -j "$TARGET/karpathy_splits.zip" '*dataset_coco.json' -d "$TARGET"
        [[ "${KEEP_ZIPS:-0}" == 1 ]] || rm -f "$TARGET/karpathy_splits.zip"
    fi
    command+=("data.dataset.split_file=$split_file")
fi

echo
echo "COCO 2017 captions are in $TARGET. Train with:"
echo "  ${command[*]}"
