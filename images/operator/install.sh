#!/bin/sh
# Installs the operator image's contents into a Debian bookworm root. Run as root inside that
# root: by the Dockerfile (RUN) and by the offline builder (e2e/build/image.py, in a chroot),
# so both produce the same image. It installs the operator's dependencies, pinned in
# requirements.txt, from PyPI or from /tmp/wheels when the builder mounts its download cache
# there, and the `llmservice` command; the operator's own package is laid over this root after
# it (its own layer, so a change to the code rebuilds only that layer).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

apt-get update -q
apt-get install -y -q --no-install-recommends $(grep -v '^#' "$here/packages.txt")

python3 -m venv /opt/llmservice
pip=/opt/llmservice/bin/pip
from=""
if [ -d /tmp/wheels ]; then from="--no-index --find-links /tmp/wheels"; fi
# Every dependency pinned, no resolver, checked for consistency; then the installers go.
$pip install -q --no-cache-dir --no-deps $from -r "$here/requirements.txt"
$pip check
$pip uninstall -q -y setuptools pip
install -m 0755 "$here/llmservice" /opt/llmservice/bin/llmservice

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /root/.cache
