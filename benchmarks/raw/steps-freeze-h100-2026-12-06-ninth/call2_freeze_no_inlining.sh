# Call 2, the next on the same warm H100, at 3feacd9's code (freezing passed as a compile option only):
# Dynamo told not to inline nn.Modules, so the parameters stay attributes that freezing folds into
# constants. Later commits do this inside FASTCHAT_SPEC_COMPILE_FREEZE=1 itself (cuda_graphs.py), so the
# plain command is now `FASTCHAT_SPEC_COMPILE_FREEZE=1 python -m fastchat_spec.bench.steps --shapes llama7b
# --compile 1 --profile --out OUT.json` (not yet rerun on the GPU: no device time was left).
source scripts/device_setup.sh >/dev/null; FASTCHAT_SPEC_COMPILE_FREEZE=1 timeout 200 python3 -c "
import sys, torch._dynamo
torch._dynamo.config.inline_inbuilt_nn_modules = False
from fastchat_spec.bench.steps import main
main(['--shapes', 'llama7b', '--compile', '1', '--profile', '--out', sys.argv[1]])" $OUT/steps_freeze_noinline.json 2>&1 | grep -v -i warn | tail -16; date -u
