# Sourced by the GPU pipelines: stage NAME command... runs one stage with its output in
# $STAGES_DIR/NAME.log and its start, end and exit status in $STAGES_DIR/stages.log.
stage() {
  local name=$1; shift
  echo "=== start $name $(date +%T)" >> "$STAGES_DIR/stages.log"
  "$@" > "$STAGES_DIR/$name.log" 2>&1
  local rc=$?
  echo "=== done  $name rc=$rc $(date +%T)" >> "$STAGES_DIR/stages.log"
  return $rc
}

# distill_sharded NAME BASE CONVERSATIONS OUT N SHARDS BATCH: the base answers the first user turn of the
# first N conversations of CONVERSATIONS (FastChat JSON), in SHARDS processes at once (batched generation is
# launch-bound, so several processes share the GPU well), merged into OUT (FastChat JSON).
distill_sharded() {
  local name=$1 base=$2 convs=$3 out=$4 n=$5 shards=$6 batch=$7 i py=${PY:-python3}
  $py -c "import json,sys; c=json.load(open(sys.argv[1]))[:int(sys.argv[2])]; k=int(sys.argv[3])
for i in range(k): json.dump(c[i::k], open(f'{sys.argv[4]}.part{i}.in', 'w'))" "$convs" "$n" "$shards" "$out"
  for ((i = 0; i < shards; i++)); do
    stage "distill_${name}_$i" $py -m fastchat_spec.train.distill --model-path "$base" --data_path "$out.part$i.in" \
      --output "$out.part$i" --max-new-tokens 256 --batch-size "$batch" --max-turns 1 &
  done
  wait
  # Written aside and renamed, so that a limit reached mid-write (the call's timeout) leaves no half file that a
  # later stage would take for the answers.
  $py -c "import json,os,sys; json.dump([x for f in sys.argv[2:] for x in json.load(open(f))], open(sys.argv[1] + '.tmp', 'w'))
os.replace(sys.argv[1] + '.tmp', sys.argv[1])" "$out" $(for ((i = 0; i < shards; i++)); do echo "$out.part$i"; done) || return 1
}

# head_recipe METHOD [HEADS]: the trainer module and flags of the reference heads of METHOD (HEADS heads,
# default 4; each head drafts one token deeper), as "MODULE FLAGS...".
# Methods: medusa1 medusa2 hydra hydra-pp chimera chimera-published.
head_recipe() {
  local n=${2:-4}
  case $1 in
    medusa1) echo "fastchat_spec.train.medusa --medusa_num_heads $n --medusa_num_layers 1" ;;
    medusa2) echo "fastchat_spec.train.medusa --medusa_num_heads $n --medusa_num_layers 1 --medusa_stage 2" ;;
    hydra) echo "fastchat_spec.train.hydra --hydra_num_heads $n --hydra_num_layers 1 --hydra_head_arch mlp" \
      "--lm_loss_weight 1.0 --learning_rate 1e-3" ;;
    hydra-pp) echo "fastchat_spec.train.hydra --hydra_num_heads $n --hydra_num_layers 4 --hydra_head_arch prefix-mlp" \
      "--teacher_loss_weight 1.0 --lm_loss_weight 0.0 --learning_rate 1e-3" ;;
    chimera) echo "fastchat_spec.train.chimera --chimera_num_heads $n --chimera_num_layers 1" ;;
    chimera-published) echo "fastchat_spec.train.chimera --chimera_num_heads $n --chimera_num_layers 1" \
      "--chimera_head_arch published" ;;
    *) echo "head_recipe: unknown method '$1' (medusa1 medusa2 hydra hydra-pp chimera chimera-published)" >&2
       return 2 ;;
  esac
}
