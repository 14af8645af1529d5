#!/usr/bin/env bash
# One revision's serving code, for an A/B run of two revisions in one GPU call (scripts/serving_bench.sh
# with SERVER_CODE=DIR runs its servers on it; ratios are only quoted within one call).
#
# Usage: bash scripts/export_code.sh REV DIR
#   writes REV's fastchat_spec/ (without the bundled models: pass checkpoints by path) and
#   fastchat_spec_hook.py into DIR (emptied first), and its commit into DIR/REVISION.
#   Run it before the call, into a folder the call carries (the device's copy has no git history), e.g.
#     bash scripts/export_code.sh c63bf6b .gpu/code_c63bf6b
#   then, on the device: SERVER_CODE=.gpu/code_c63bf6b bash scripts/serving_bench.sh CKPT BASE OUT
set -euo pipefail
if [ $# -ne 2 ]; then
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
    exit 2
fi
REV=$1 DIR=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHA=$(git -C "$ROOT" rev-parse --verify "$REV^{commit}")
rm -rf "$DIR"
mkdir -p "$DIR"
git -C "$ROOT" archive "$SHA" fastchat_spec fastchat_spec_hook.py ":(exclude)fastchat_spec/models" | tar -x -C "$DIR"
echo "$SHA" > "$DIR/REVISION"
echo "export_code.sh: $REV ($SHA) in $DIR" >&2
