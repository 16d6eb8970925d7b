#!/usr/bin/env bash
# Side-by-side replay of two versions of the service: BASE (a git revision) and the working
# tree, run alternately (base, new, base, new, ...) so that a box whose speed drifts from one
# minute to the next hits both alike. Compare the printed lines pair by pair.
#
#   bench/ab.sh REV PAIRS BACKEND [replay.py arguments...]
#   bench/ab.sh 2243b1b 3 postgres
#   bench/ab.sh HEAD~1 2 sqlite --runs 150 --pace 1
#
# Each side runs `bench/replay.py --workers 64 --runs 600 --repeat 1 --no-startup` plus the
# extra arguments (later ones win), with its own code first on PYTHONPATH and this checkout's
# virtual environment.
set -euo pipefail

if [ $# -lt 3 ]; then
    sed -n '2,12p' "$0"
    exit 2
fi
rev=$1 pairs=$2 backend=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
python=$root/.venv/bin/python
base=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$base" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add --detach --force "$base" "$rev" >/dev/null
data=$root/data/minisom_runs.jsonl.gz

run() {  # label, source tree, replay.py arguments...
    local label=$1 tree=$2
    shift 2
    (cd "$tree" && PYTHONPATH=$tree "$python" bench/replay.py --backend "$backend" --workers 64 \
        --runs 600 --repeat 1 --no-startup --data "$data" "$@" | grep " #0: " | sed "s/^/$label /")
}
for _ in $(seq "$pairs"); do
    run "base($rev)" "$base" "$@"
    run "new" "$root" "$@"
done
