# Sourced by lent-GPU calls (after scripts/device_setup.sh and scripts/stages.sh):
#   nano_heads OUTDIR TREE_NODES
# trains 4 Hydra++ and 4 Chimera heads for the bundled nano base at once (HEAD_STEPS steps of 8, default 100;
# about a minute on an H100) on 400 ShareGPT conversations from .gpu/small_xz (24 held out), into
# OUTDIR/hydra-pp-nano and OUTDIR/chimera-nano, with trees of TREE_NODES nodes searched from measured acceptance.
# Their float32 weights are too large to carry, so the calls that need them train them. Carry: .gpu/small_xz.
nano_heads() {
  local out=$1 nodes=$2 data=runs/nano_heads_data
  mkdir -p "$data"
  if [ ! -f "$data/train400.json" ]; then
    for f in train heldout; do unxz -c .gpu/small_xz/$f.json.xz > "$data/$f.json"; done
    python3 -c "import json, sys; d = sys.argv[1] + '/'
json.dump(json.load(open(d + 'train.json'))[:400], open(d + 'train400.json', 'w'))
json.dump(json.load(open(d + 'heldout.json'))[:24], open(d + 'heldout24.json', 'w'))" "$data"
  fi
  for method in hydra-pp chimera; do
    # shellcheck disable=SC2046  # the recipe is a module and its flags
    python3 -m $(head_recipe "$method" 4) --model_name_or_path fastchat_spec/models/vicuna-nano \
      --output_dir "$out/$method-nano" --data_path "$data/train400.json" \
      --eval_data_path "$data/heldout24.json" --per_device_train_batch_size 8 --max_steps "${HEAD_STEPS:-100}" \
      --model_max_length 512 --logging_steps 50 --disable_tqdm True --dataloader_num_workers 0 \
      --tree_nodes "$nodes" > "$OUT/heads_$method.log" 2>&1 &
  done
  wait; grep -a "wrote" "$OUT"/heads_*.log
}
