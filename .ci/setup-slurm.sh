#!/usr/bin/env bash
# A one-node SLURM cluster (munge, slurmctld, slurmd, optionally slurmdbd + MariaDB for
# accounting) on a fresh Debian 12 machine without systemd, for the workflow's SLURM test.
# Every daemon it starts is recorded in $SLURM_CI_DIR/pids as "name pid";
# .ci/teardown-slurm.sh stops exactly those PIDs.
#
#   WITH_SLURMDBD=1   real accounting (sacct works, so the executor plugin's defaults work)
#   FAKE_GPUS=1       gres/gpu count the node advertises (File=/dev/null: no real GPU needed)
#   SLURM_CPUS=4      advertise more CPUs than the machine has (default: the real hardware)
#   SKIP_APT=1        do not call apt-get (packages already installed)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/slurm-ci}
FAKE_GPUS=${FAKE_GPUS:-1}
WITH_SLURMDBD=${WITH_SLURMDBD:-0}
SLURM_CPUS=${SLURM_CPUS:-}
SKIP_APT=${SKIP_APT:-0}

PKGS="slurmctld slurmd slurm-client munge"
[ "$WITH_SLURMDBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server mariadb-client"
if [ "$SKIP_APT" != 1 ]; then
  # shellcheck disable=SC2086
  if ! dpkg -s $PKGS >/dev/null 2>&1; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  fi
fi

if [ -f "$SLURM_CI_DIR/pids" ]; then
  echo "setup-slurm: $SLURM_CI_DIR/pids exists (a cluster is running?); run .ci/teardown-slurm.sh first" >&2
  exit 1
fi
rm -rf "$SLURM_CI_DIR"; mkdir -p "$SLURM_CI_DIR"/{ctld,slurmd,log}
PIDS="$SLURM_CI_DIR/pids"; : > "$PIDS"
wait_for() { for _ in $(seq 150); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "setup-slurm: timeout waiting for: $1" >&2; return 1; }

# --- munge (Debian's postinst normally creates the key; make sure) ---
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge; chmod 0600 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
rm -f /run/munge/munged.pid
runuser -u munge -- /usr/sbin/munged                  # daemonizes
wait_for '[ -S /run/munge/munge.socket.2 ] && [ -s /run/munge/munged.pid ]'
echo "munged $(cat /run/munge/munged.pid)" >> "$PIDS"
munge -n | unmunge >/dev/null

# --- slurm.conf / gres.conf from the real hardware (slurmd -C needs no config) ---
NODE=$(hostname -s)
HW=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//; s/ UpTime=.*//')
MEM=$(( $(slurmd -C | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p') * 9 / 10 ))
EXTRA=""
if [ -n "$SLURM_CPUS" ]; then HW="CPUs=$SLURM_CPUS"; EXTRA="SlurmdParameters=config_overrides"; fi
mkdir -p /etc/slurm
GRES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES="Gres=gpu:$FAKE_GPUS"; EXTRA="$EXTRA"$'\n'"GresTypes=gpu"
  # File= is required: "Name=gpu Count=1" alone registers 0 GPUs and the node drains
  { echo "AutoDetect=off"
    for _ in $(seq "$FAKE_GPUS"); do echo "NodeName=$NODE Name=gpu File=/dev/null"; done; } > /etc/slurm/gres.conf
else
  rm -f /etc/slurm/gres.conf
fi
if [ "$WITH_SLURMDBD" = 1 ]; then
  ACCT=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStorageTRES=gres/gpu'
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_CI_DIR/ctld
SlurmdSpoolDir=$SLURM_CI_DIR/slurmd
SlurmctldPidFile=$SLURM_CI_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_CI_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_CI_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_CI_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
$ACCT
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1000
$EXTRA
NodeName=$NODE NodeAddr=127.0.0.1 $HW RealMemory=$MEM $GRES State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# --- optional accounting: MariaDB + slurmdbd ---
if [ "$WITH_SLURMDBD" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null 2>&1 || true
  /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid > "$SLURM_CI_DIR/log/mariadb.log" 2>&1 &
  echo "mariadbd $!" >> "$PIDS"
  wait_for 'mysqladmin ping'
  mysql -e "DROP DATABASE IF EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$SLURM_CI_DIR/log/slurmdbd.log
PidFile=$SLURM_CI_DIR/slurmdbd.pid
EOF
  chmod 0600 /etc/slurm/slurmdbd.conf
  /usr/sbin/slurmdbd                                   # daemonizes
  wait_for "[ -s $SLURM_CI_DIR/slurmdbd.pid ]"
  echo "slurmdbd $(cat "$SLURM_CI_DIR/slurmdbd.pid")" >> "$PIDS"
  wait_for 'sacctmgr -n list cluster'
  sacctmgr -i add cluster ci >/dev/null
fi

# --- slurmctld + slurmd (both daemonize) ---
/usr/sbin/slurmctld
/usr/sbin/slurmd
wait_for "[ -s $SLURM_CI_DIR/slurmctld.pid ] && [ -s $SLURM_CI_DIR/slurmd.pid ]"
echo "slurmctld $(cat "$SLURM_CI_DIR/slurmctld.pid")" >> "$PIDS"
echo "slurmd $(cat "$SLURM_CI_DIR/slurmd.pid")" >> "$PIDS"
wait_for '[ "$(sinfo -h -N -o %T)" = idle ]' || { sinfo -N -o '%N %T %E' >&2; tail -20 "$SLURM_CI_DIR/log/slurmctld.log" >&2; exit 1; }
sinfo -N -o '%N %c %m %G %T'
