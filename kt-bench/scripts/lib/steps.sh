# Sourced by the device_*.sh scripts: a summary of what ran and steps bounded by a wall budget.
# The caller sets: out (results folder), summary (summary file), budget (seconds, counted with
# bash's $SECONDS). Optional: STEP_MIN_LEFT (20: a step with less of the budget left is skipped),
# OUTFILE (the stdout file's name, default the step's name; stdout is appended, so several steps
# may share one file), STEP_ERR (the stderr file, default NAME.err).

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - SECONDS)); }

# step NAME LIMIT_S CMD...: runs CMD with stdout appended to $out/NAME.out (or $OUTFILE.out) and
# stderr to $out/NAME.err (or $STEP_ERR), at most min(LIMIT_S, time left) seconds; notes the time
# and exit status, and returns CMD's.
step() {
    local name=$1 limit=$2; shift 2
    local l; l=$(left)
    if [ "$l" -lt "${STEP_MIN_LEFT:-20}" ]; then note "$name: skipped (${l}s of the budget left)"; return 1; fi
    [ "$limit" -gt "$l" ] && limit=$l
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$out/${OUTFILE:-$name}.out" 2>>"$out/${STEP_ERR:-$name.err}"
    local rc=$?
    note "$name: rc $rc in $((SECONDS - t0)) s (limit ${limit}s): $*"
    return $rc
}
