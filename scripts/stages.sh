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
