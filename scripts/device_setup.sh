# Sourced at the start of every lent-GPU run: install the carried wheels
# (transformers 4.x, FastChat and what its worker needs) over the image's torch: those in .whl/, or, where no
# call carried or made .whl/, those of .gpu/whl_min (scripts/device/prep.sh).
ls .whl/*.whl >/dev/null 2>&1 || { mkdir -p .whl && cp .gpu/whl_min/*.whl .whl/ 2>/dev/null; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PATH=/tmp/site/bin:$PATH
# The hook's .pth is not processed from PYTHONPATH: register explicitly via sitecustomize.
mkdir -p /tmp/sc && echo "import fastchat_spec_hook; fastchat_spec_hook.install()" > /tmp/sc/sitecustomize.py
# PY_SWITCH_MS=N (optional): Python's thread switch interval in every process, in milliseconds (default 5).
echo 'import os, sys; v = os.environ.get("PY_SWITCH_MS"); v and sys.setswitchinterval(float(v) / 1000)' >> /tmp/sc/sitecustomize.py
export PYTHONPATH=/tmp/sc:$PYTHONPATH
python3 -c "import torch, transformers, fastchat; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name(0))"
# unxz FILE.xz OUT: decompress a carried file with Python's lzma (the machine's image may have no xz).
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$@"; }
