#!/usr/bin/env bash
# Stops exactly the daemons .ci/setup-slurm.sh recorded ($SLURM_CI_DIR/pids), in dependency order.
SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/slurm-ci}
PIDS="$SLURM_CI_DIR/pids"
[ -f "$PIDS" ] || exit 0
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  pid=$(awk -v n="$name" '$1==n {print $2}' "$PIDS")
  [ -n "$pid" ] || continue
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; echo "killed $name ($pid)"; else echo "stopped $name ($pid)"; fi
done
rm -f "$PIDS"
