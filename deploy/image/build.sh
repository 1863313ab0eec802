#!/usr/bin/env bash
# Builds the agent's OCI image from Debian packages and the project's wheels only:
# mmdebstrap makes a Debian rootfs (python3, iperf3, journalctl) with the agent
# installed in /opt/ai-bottleneck, then buildah turns it into an image with
# deploy/image/Containerfile. No base image is pulled from a container registry.
#
#   deploy/image/build.sh [IMAGE]        (default ai-bottleneck:0.1.0; run as root)
#
# Needs the Debian packages mmdebstrap and buildah; the Debian suite and
# mirrors are this host's apt sources (/etc/apt/sources.list{,.d}), the Python
# wheels come from pip's configured index. Then, for example:
#   podman run --rm --network host ai-bottleneck:0.1.0 run
#   podman push ai-bottleneck:0.1.0 REGISTRY/ai-bottleneck:0.1.0
set -euo pipefail
image=${1:-ai-bottleneck:0.1.0}
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done
. /etc/os-release
suite=${SUITE:-$VERSION_CODENAME}

# The agent and its dependencies as wheels, built here (same Python minor version as
# the image's Debian python3: the suite is this host's).
"$python" -m pip wheel -q --disable-pip-version-check "$repo" -w "$work/wheels"

# The host's apt sources, one-line format, for the suite above.
sources=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | sort -u \
          | awk -v s="$suite" '$2 ~ "^"s { sub("/$", "", $1); print "deb " $1 " " $2 " main" }' \
          | sort -u)
[ -n "$sources" ] || { echo "build.sh: no apt sources for $suite on this host" >&2; exit 1; }

mmdebstrap --mode=root --variant=minbase --format=tar \
  --include=python3,python3-venv,iperf3,systemd,ca-certificates \
  --customize-hook="copy-in $work/wheels /tmp" \
  --customize-hook='chroot "$1" python3 -m venv /opt/ai-bottleneck' \
  --customize-hook='chroot "$1" env -i PATH=/usr/bin:/bin /opt/ai-bottleneck/bin/pip install -q --no-index --disable-pip-version-check --find-links /tmp/wheels ai-bottleneck' \
  --customize-hook='rm -rf "$1"/tmp/wheels "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/var/cache/apt/*' \
  --customize-hook='mkdir -p "$1"/etc/ai-bottleneck "$1"/var/lib/ai-bottleneck && chown 65534:65534 "$1"/var/lib/ai-bottleneck' \
  "$suite" "$work/rootfs.tar" - <<<"$sources"

cp "$repo/deploy/image/Containerfile" "$work/Containerfile"
cp "$repo/deploy/config.toml" "$work/config.toml"
buildah bud --quiet --layers=false -f "$work/Containerfile" -t "$image" "$work"
echo "built $image"
