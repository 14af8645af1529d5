# Pack what a pipeline run measured (no weights) into $OUT/pipeline.tgz.
RUN=${RUN:-runs/pipeline}
tar czf "$OUT/pipeline.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' \
  --exclude='data' --exclude='cllm_trajectories.json' --exclude='tokenizer.model' "$RUN" 2>/dev/null
cat "$RUN/stages.log"
