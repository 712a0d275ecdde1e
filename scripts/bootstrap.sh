# Sourced by scripts/demo and scripts/test: make .venv hold this project and its locked dependencies.
# Works on a fresh Debian 12/13 (python3 >= 3.11) and on machines with pyenv; installs python3-venv when
# the interpreter cannot make virtual environments. Set PYTHON to choose the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "error: need root (or sudo) to run: $*" >&2; return 1
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || { echo "error: please install these packages: $*" >&2; return 1; }
    if [ "$APT_UPDATED" = 0 ]; then
        echo "==> apt-get update" >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    echo "==> apt-get install $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "error: Aua needs Python 3.11 or newer (python3 --version says: $(python3 --version 2>&1))" >&2
    return 1
}

ensure_venv() {
    local python stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        python="$(find_python)"
        if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
            local version
            version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt_install "python${version}-venv" || apt_install python3-venv
        fi
        echo "==> creating $VENV with $python" >&2
        "$python" -m venv "$VENV"
    fi
    if [ ! -x "$VENV/bin/uv" ]; then
        echo "==> installing uv into $VENV" >&2
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --upgrade >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1" >&2
    fi
    want="$(cat "$ROOT/uv.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    stamp="$VENV/.aua-synced"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing Python dependencies from uv.lock" >&2
        (
            # uv trusts only its bundled root certificates by default, while the pip of Debian's
            # python3-venv (which fetched uv) trusts the system store: behind a TLS-intercepting proxy
            # (corporate networks, CI sandboxes) uv then fails with "invalid peer certificate:
            # UnknownIssuer". Use the system store instead when there is one and the caller has not chosen.
            if [ -z "${SSL_CERT_FILE:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
                export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"
            fi
            cd "$ROOT" && UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never \
                "$VENV/bin/uv" sync --frozen --all-extras --python "$VENV/bin/python" --quiet >&2
        )
        echo "$want" >"$stamp"
    fi
}
