#!/bin/sh
# usage: copy_checkout.sh SRC DEST
# Copies the checkout SRC into DEST as a fresh clone holds it: no .git, no caches, no build/
# or *.egg-info left over from a host-side install.  Used where the tests install the project
# as a user does (the systemd guests, and install-deps natively in the chroot before them),
# so that both install the same files and install-deps' source stamp matches.
set -eu
mkdir -p "$2"
tar -C "$1" --exclude=./.git --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./.ruff_cache -cf - . \
    | tar -C "$2" -xf -
