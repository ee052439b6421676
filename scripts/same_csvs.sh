#!/bin/bash
# Behaviour check for a refactor: short random:tiny runs of every task with the code of REV and with
# the working tree, then a byte comparison of every CSV they write. Exit 0 when all are identical.
#
#   bash scripts/same_csvs.sh REV [WORKDIR]     # e.g. bash scripts/same_csvs.sh main~5
#
# Uses the repository's .venv (bootstrap.sh), three Debian licence texts as the corpus and the
# leaderboard test data of tests/leaderboard_data.py; a few minutes on 2 CPU cores.
set -euo pipefail
rev=${1:?usage: bash scripts/same_csvs.sh REV [WORKDIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-$(mktemp -d)}
py=$repo/.venv/bin/python
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$work/corpus"
i=0
for f in /usr/share/common-licenses/{GPL-3,Apache-2.0,LGPL-2.1}; do cp "$f" "$work/corpus/doc$i.txt"; i=$((i + 1)); done
(cd "$repo/tests" && "$py" -c "import sys; from pathlib import Path; from leaderboard_data import write_data; write_data(Path(sys.argv[1]))" "$work/lbdata")
git -C "$repo" worktree add -f -q --detach "$work/old" "$rev"
trap 'git -C "$repo" worktree remove --force "$work/old"' EXIT

runs() {  # runs SOURCE OUT: every task on random:tiny with SOURCE's run_eval.py (its own package first on sys.path)
  local src=$1 out=$2
  local common=(--model random:tiny --no-progress --no-plots)
  run() {
    local name=$1; shift
    (cd "$src" && EVALHARNESS_CACHE="$out/cache" "$py" run_eval.py "${common[@]}" --out "$out/$name" "$@" \
      > "$out/$name.log" 2>&1) || { echo "$src: $name failed, see $out/$name.log"; return 1; }
  }
  mkdir -p "$out"
  run truncated --method base,pi,ntk,yarn,dynamic-yarn --factor 2 --tasks perplexity --dataset "local:$work/corpus" \
    --lengths 128,256,512 --docs 2
  run sliding --method base,yarn --factor 2 --tasks perplexity --dataset "local:$work/corpus" --protocol sliding \
    --stride 128 --lengths 256,512 --docs 2
  run sweep --method yarn --factor 2 --tasks temperature-sweep --dataset "local:$work/corpus" --lengths 512 --docs 2
  run passkey --method base,yarn --factor 2 --tasks passkey --lengths 512 --depths 2 --trials 1
  run leaderboard --method base,yarn --factor 4 --tasks leaderboard --leaderboard-tasks arc_challenge,truthfulqa_mc2 \
    --leaderboard-data "$work/lbdata" --limit 2
  run ruler --method base,yarn --factor 2 --tasks ruler --ruler-tasks niah_single_1,ruler_fwe --lengths 1024 \
    --ruler-samples 2
}

runs "$work/old" "$work/before"
runs "$repo" "$work/after"
status=0
for before in $(cd "$work/before" && find . -name '*.csv' -not -path './cache/*' | sort); do
  if cmp -s "$work/before/$before" "$work/after/$before"; then
    echo "same      ${before#./}"
  else
    echo "DIFFERENT ${before#./}"; status=1
  fi
done
extra=$(comm -13 <(cd "$work/before" && find . -name '*.csv' -not -path './cache/*' | sort) \
                 <(cd "$work/after" && find . -name '*.csv' -not -path './cache/*' | sort))
[ -z "$extra" ] || { echo "only after: $extra"; status=1; }
exit $status
