#!/bin/sh
# Interpreter for Bazel's py_binary/py_test: runs the project's venv python.
# Bazel reaches this file through runfiles/sandbox symlinks; `readlink -f`
# follows them back to the source tree, whose root holds .venv/.
# Override with SEI_TF_PYTHON=/path/to/python (pass it with --action_env /
# --test_env if needed).
if [ -n "${SEI_TF_PYTHON:-}" ]; then
  exec "$SEI_TF_PYTHON" "$@"
fi
here=$(dirname "$(readlink -f "$0")")
root=$(cd "$here/../../.." && pwd)
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "venv_python.sh: $root/.venv/bin/python not found; create the venv first" >&2
  exit 1
fi
exec "$root/.venv/bin/python" "$@"
