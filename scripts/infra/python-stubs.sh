#!/usr/bin/env bash
# Python with gRPC and stubs generated from Natter's protos, for the test
# that runs the FAQ bot's Python example (services/faqbot/python) against
# a real Natter, as other languages call Natter.
#
# A virtualenv with the pinned grpcio-tools from PyPI, made once into the
# cache; the stubs generated again from proto/ on every call (a second),
# so they never lag the protos.
#
# Usage: scripts/infra/python-stubs.sh env
#   make sure of both, then print `export NATTER_TEST_PYTHON=...` (the
#   virtualenv's python) and `export NATTER_TEST_PYTHON_STUBS=...` (the
#   stubs, for PYTHONPATH)
#
# Environment:
#   NATTER_INFRA_DIR              runtime state; the stubs go to python-stubs/
#                                 (default: <repo>/target/infra)
#   NATTER_GRPCIO_TOOLS_VERSION   the release installed (default 1.85.1)
#   PYTHON                        the python the virtualenv is made from
#                                 (default python3)
#   XDG_CACHE_HOME                the virtualenv goes to $XDG_CACHE_HOME/natter
#                                 (default ~/.cache/natter)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
infra=${NATTER_INFRA_DIR:-$repo_root/target/infra}
version=${NATTER_GRPCIO_TOOLS_VERSION:-1.85.1}
venv=${XDG_CACHE_HOME:-$HOME/.cache}/natter/python-grpcio-tools-$version
stubs=$infra/python-stubs

if [[ ${1:-} != env ]]; then
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
fi
if ! "$venv/bin/python" -c 'import grpc_tools' 2>/dev/null; then
  echo "python-stubs: installing grpcio-tools $version into $venv" >&2
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcio-tools==$version" >&2
fi
rm -rf "$stubs"
mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -I "$repo_root/proto" --python_out="$stubs" \
  --grpc_python_out="$stubs" "$repo_root"/proto/natter/v1/*.proto >&2
echo "export NATTER_TEST_PYTHON=$venv/bin/python"
echo "export NATTER_TEST_PYTHON_STUBS=$stubs"
