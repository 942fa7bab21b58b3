#!/usr/bin/env bash
# LocalStack (SQS, S3, SNS) on 127.0.0.1:4566 without Docker, in the foreground (Ctrl-C or SIGTERM stops it).
#
#   localstack/run-without-docker.sh                  # install if needed, then run
#   localstack/run-without-docker.sh --install-only   # only build the virtualenv (idempotent)
#   localstack/run-without-docker.sh --check-install  # exit 0 if the virtualenv is current, else 1
#
# The first run builds a Python 3.13 virtualenv in .localstack-venv (about a minute, from
# PyPI); later runs reuse it and start in a few seconds. As in docker-compose.yml, the
# hooks in init/ready.d run once LocalStack is ready, so Conveyor's queues, dead-letter
# queue and bucket exist (prefix conveyor, pool shared, bucket conveyor). Nothing persists.
# scripts/install-servers runs --install-only; the test suite (tests/servers.py,
# LocalStackServer) starts LocalStack from that virtualenv itself, with its own settings.
#
#   LOCALSTACK_PYTHON  a Python 3.13 interpreter (default: python3.13, then pyenv's 3.13.*)
#   LOCALSTACK_VENV    where the virtualenv lives (default: .localstack-venv, git-ignored)
#   LOCALSTACK_PORT    port on 127.0.0.1 (default: 4566)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LOCALSTACK_VENV:-$root/.localstack-venv}
port=${LOCALSTACK_PORT:-4566}
# localstack-core needs Python 3.13; the pins keep its dependencies at versions it works with.
requirements=(
  "localstack-core[runtime]==2026.3.0" "cbor2<6" "pyopenssl<26" "cryptography<47"
  service-identity awscli-local
)

mode=run
case ${1:-} in
  "") ;;
  --install-only) mode=install ;;
  --check-install) mode=check ;;
  *) echo "usage: $0 [--install-only | --check-install]" >&2; exit 2 ;;
esac

find_python() {
  local candidate pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
  # python3.13 may be a pyenv shim that fails when 3.13 is not selected: each candidate
  # is tried, not merely found.
  for candidate in ${LOCALSTACK_PYTHON:-} python3.13 \
    $(ls -d "$pyenv_root"/versions/3.13*/bin/python3.13 2>/dev/null | sort -V -r); do
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "run-without-docker: no Python 3.13 found (tried \$LOCALSTACK_PYTHON, python3.13 on the" \
    "PATH, $pyenv_root/versions/3.13*); install one (e.g. \`pyenv install 3.13\`) or set" \
    "LOCALSTACK_PYTHON" >&2
  return 1
}

# Every other package is pinned too, so a new release upstream cannot break the install.
constraints=$root/localstack/constraints.txt
stamp=$venv/.conveyor-requirements
wanted() { echo "${requirements[*]} $(sha256sum "$constraints" | cut -d' ' -f1)"; }
installed() {
  [ "$(cat "$stamp" 2>/dev/null)" = "$(wanted)" ] && [ -x "$venv/bin/python" ]
}

# (Re)build the virtualenv only when it is missing or its requirements changed. The stamp
# is written last, so an interrupted install is redone; the lock (on this script) keeps two
# installs from building the same virtualenv at once.
install_venv() {
  installed && return 0
  exec 9<"${BASH_SOURCE[0]}"
  if command -v flock >/dev/null; then flock 9; fi
  if ! installed; then
    if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
      echo "run-without-docker: $venv exists and is not a virtualenv; not replacing it" >&2
      return 1
    fi
    local python
    python=$(find_python)
    echo "run-without-docker: installing LocalStack into $venv (with $python)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -c "$constraints" "${requirements[@]}"
    wanted >"$stamp"
  fi
  exec 9<&-
}

case $mode in
  check) installed; exit ;;
  install) install_venv; exit ;;
esac
install_venv

# LocalStack's files (state, logs, init hooks) under the venv instead of /var/lib/localstack
# and /etc/localstack; its ready.d is this directory's, as in the compose file.
filesystem=$venv/filesystem
mkdir -p "$filesystem/etc/localstack/init"
ln -sfn "$root/localstack/init/ready.d" "$filesystem/etc/localstack/init/ready.d"

export PATH="$venv/bin:$PATH"              # awslocal, for the hooks
export OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT=$filesystem
export GATEWAY_LISTEN=127.0.0.1:$port      # else it binds 0.0.0.0
export GATEWAY_SERVER=hypercorn            # the default server ignores the address above
export DNS_ADDRESS=0                       # else it binds port 53
# Queue URLs as http://127.0.0.1:PORT/queue/REGION/ACCOUNT/NAME (the default host,
# localhost.localstack.cloud, needs public DNS); awslocal goes there too.
export LOCALSTACK_HOST=127.0.0.1:$port SQS_ENDPOINT_STRATEGY=path
# SNS carries the control fanout (cancellations) when the services create their queues.
export SERVICES=sqs,s3,sns EAGER_SERVICE_LOADING=1 PERSISTENCE=0
export SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 DISABLE_DEPRECATION_NOTICE=1

"$venv/bin/python" -m localstack.runtime.main &
child=$!
# After it has served an SQS long poll, LocalStack 2026.3 stops its services on SIGTERM or
# SIGINT but then hangs at interpreter exit; nothing persists, so it gets 10 s, then SIGKILL.
stop() {
  kill -TERM "$child" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$child" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "run-without-docker: LocalStack did not exit within 10 s; killing it" >&2
  kill -KILL "$child" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
wait "$child"
