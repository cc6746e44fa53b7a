#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests marked `slurm` and for trying `--executor slurm`.
#
#   bash slurm/cluster.sh start    # install (Debian packages, once) and start munged, slurmctld, slurmd
#   bash slurm/cluster.sh status   # sinfo, and which daemons this script started are alive
#   bash slurm/cluster.sh stop     # stop exactly the daemons this script started (by their pid files)
#
# Made for containers without systemd or cgroups (see ../shared/reference/machines.md): proctrack/linuxproc,
# task/none, select/cons_tres with CR_Core, SlurmUser=root, all state/spool/log/pid files under $STATE.
# The partition is called "debug" (slurm/profiles.toml's `local` profile uses it). No accounting storage:
# `sacct` is unavailable, so `bench status` reads the queue (squeue) and the result files instead.
#
# Clients (sinfo, sbatch, squeue, submitit) find the cluster through /etc/slurm/slurm.conf, which this script
# writes when it is absent or was written by it before; otherwise export SLURM_CONF=$STATE/slurm.conf.
set -euo pipefail

STATE=${BENCH_SLURM_STATE:-/tmp/afd-bench-slurm}
CONF=$STATE/slurm.conf
SYSCONF=/etc/slurm/slurm.conf
MARK="# written by afd-bench slurm/cluster.sh"

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "cluster.sh: must run as root (installs packages, starts daemons)" >&2; exit 1; fi
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  local host node_line
  host=$(hostname -s)
  mkdir -p "$STATE"/{ctld,spool,log,run}
  # the node line as slurmd sees this machine (CPUs, sockets, cores, memory), minus the uptime field
  node_line=$(slurmd -C | head -1 | sed -e 's/ UpTime=.*//' -e "s/^NodeName=[^ ]*/NodeName=$host/")
  cat > "$CONF" <<EOF
$MARK
ClusterName=afdbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
JobRequeue=1
ReturnToService=2
MinJobAge=300
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  if [ ! -e "$SYSCONF" ] || grep -qF "$MARK" "$SYSCONF"; then
    mkdir -p "$(dirname "$SYSCONF")"
    cp "$CONF" "$SYSCONF"
  else
    echo "cluster.sh: $SYSCONF exists and was not written by this script; export SLURM_CONF=$CONF" >&2
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  need_root
  install
  write_conf
  # munged as the munge user, with its own socket folder
  mkdir -p /run/munge "$STATE/munge"
  chown munge:munge /run/munge "$STATE/munge"
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if ! alive "$STATE/run/munged.pid"; then
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" --force
    sleep 0.5
    cp "$STATE/munge/munged.pid" "$STATE/run/munged.pid"
  fi
  alive "$STATE/run/slurmctld.pid" || slurmctld -f "$CONF"
  sleep 1
  alive "$STATE/run/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 1 30); do
    if SLURM_CONF=$CONF sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      SLURM_CONF=$CONF sinfo
      return 0
    fi
    sleep 1
  done
  echo "cluster.sh: the node did not become idle in 30 s; logs in $STATE/log" >&2
  SLURM_CONF=$CONF sinfo >&2 || true
  exit 1
}

stop() {
  local name pidfile
  for name in slurmd slurmctld munged; do
    pidfile=$STATE/run/$name.pid
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")" || true
      for _ in $(seq 1 20); do alive "$pidfile" || break; sleep 0.5; done
      alive "$pidfile" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  echo "cluster.sh: stopped"
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if alive "$STATE/run/$name.pid"; then echo "$name: running (pid $(cat "$STATE/run/$name.pid"))"
    else echo "$name: not running"; fi
  done
  SLURM_CONF=$CONF sinfo 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
