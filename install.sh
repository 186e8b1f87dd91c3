#!/usr/bin/env bash
# One command from a fresh machine to JupyterLab on rustloop:
#   builds rustloop (release), creates a Python environment with JupyterLab (and its widget
#   manager, jupyterlab_widgets),
#   installs the "Rust (rustloop)" kernelspec into it, pre-builds tokio and the
#   runtime crate, and opens JupyterLab on notebooks/.
# Options: --no-lab (install only, don't start JupyterLab). Extra args go to jupyter lab.
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rustloop/target}"
venv="${RUSTLOOP_VENV:-$HOME/.cache/rustloop/venv}"
start_lab=1
if [ "${1:-}" = "--no-lab" ]; then start_lab=0; shift; fi

command -v cargo >/dev/null || { echo "rustloop needs Rust (cargo, rustc): https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "rustloop needs python3 for Jupyter" >&2; exit 1; }

echo "== Building rustloop (release; the first build takes several minutes)"
cargo build --release --locked

echo "== Python environment with JupyterLab ($venv)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# jupyterlab_widgets: the widget manager, so rustloop::widgets render in JupyterLab and
# Notebook 7 with no extra step.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check jupyterlab notebook jupyterlab_widgets

echo "== Kernelspec and compile cache"
cp "$CARGO_TARGET_DIR/release/rustloop" "$venv/bin/rustloop"
# Cells link through it when it sits next to rustloop (src/bin/rustloop-link.rs).
cp "$CARGO_TARGET_DIR/release/rustloop-link" "$venv/bin/rustloop-link"
VIRTUAL_ENV="$venv" "$venv/bin/rustloop" install --sys-prefix
"$venv/bin/jupyter" kernelspec list

if [ "$start_lab" = 1 ]; then
  echo "== Starting JupyterLab on notebooks/"
  exec "$venv/bin/jupyter" lab --notebook-dir=notebooks "$@"
fi
