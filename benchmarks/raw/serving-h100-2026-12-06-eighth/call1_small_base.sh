# Call 1: the real small reference base (full --size small defaults) and Medusa-1 heads (300 steps on ShareGPT answers).
mkdir -p .whl && cp .gpu/whl_min/*.whl .whl/
source scripts/device_setup.sh >/dev/null
mkdir -p runs/small_data
for f in train heldout; do python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" .gpu/small_xz/$f.json.xz runs/small_data/$f.json; done
ls -la runs/small_data
STAGES="base heads" bash scripts/small_serving.sh runs/small_data runs/small /tmp/r/small; echo "rc $?"
cp runs/small/base.log runs/small/heads.log $OUT/ 2>/dev/null
ls -la runs/small/*/ | head -30
nvidia-smi --query-gpu=name,memory.used --format=csv
