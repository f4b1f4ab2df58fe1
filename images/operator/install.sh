#!/bin/sh
# Installs the operator image's contents into a Debian bookworm root. Run as root inside that
# root: by the Dockerfile (RUN) and by the offline builder (e2e/build/image.py, in a chroot),
# so both produce the same image. The operator's source is in src/ beside this script; its
# dependencies are pinned in requirements.txt and come from PyPI, or from /tmp/wheels when
# the builder mounts its download cache there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

apt-get update -q
apt-get install -y -q --no-install-recommends $(grep -v '^#' "$here/packages.txt")

python3 -m venv /opt/llmservice
pip=/opt/llmservice/bin/pip
from=""
if [ -d /tmp/wheels ]; then from="--no-index --find-links /tmp/wheels"; fi
# Every dependency pinned, no resolver; then the operator itself from source (setuptools is
# pinned with them: the build needs a newer one than ensurepip's), then the installers go.
$pip install -q --no-cache-dir --no-deps $from -r "$here/requirements.txt"
$pip install -q --no-cache-dir --no-deps --no-build-isolation "$here/src"
$pip uninstall -q -y setuptools pip
/opt/llmservice/bin/python -c "import llmservice_operator.cli"

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /root/.cache
