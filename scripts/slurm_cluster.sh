#!/usr/bin/env bash
# Start (idempotently) a one-node SLURM cluster on this machine, for tests and CI.
#
#   sudo scripts/slurm_cluster.sh          # install (apt) if needed, configure, start, wait until idle
#   sudo scripts/slurm_cluster.sh stop     # stop slurmd, slurmctld, munged
#   sudo scripts/slurm_cluster.sh status   # show daemons and sinfo
#
# Uses Debian's munge/slurmctld/slurmd packages, runs the daemons directly (no systemd needed),
# everything as root: config in /etc/slurm, state in /var/spool/slurmctld and /var/spool/slurmd,
# logs in /var/log/slurm. The node is this host (hostname -s) at 127.0.0.1, with CPUs from nproc and
# RealMemory from /proc/meminfo (what free reports, minus headroom); one partition, $SLURM_PARTITION_NAME (default: debug).
# A second run while the cluster is up only checks it (about a second).
#
# Env: SLURM_PARTITION_NAME (debug), SLURM_WAIT_S (60: how long to wait for the node to be idle),
#      SLURM_MEM_HEADROOM_MB (max(1024, 10% of RAM)).
set -euo pipefail

ACTION="${1:-start}"
PARTITION="${SLURM_PARTITION_NAME:-debug}"
WAIT_S="${SLURM_WAIT_S:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_KEY=/etc/munge/munge.key

log() { echo "[slurm_cluster] $*"; }
die() { echo "[slurm_cluster] ERROR: $*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
  die "must run as root (daemons run as root; SlurmUser=root)"
fi

pid_alive() {  # pid_alive PIDFILE -> 0 if the pid in it is a live process
  [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

log_tails() {
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    if [ -f "$f" ]; then
      echo "----- tail -n 30 $f -----" >&2
      tail -n 30 "$f" >&2 || true
    fi
  done
}

stop_daemon() {  # stop_daemon NAME PIDFILE
  local name=$1 pidfile=$2 pid i
  if pid_alive "$pidfile"; then
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not exit, sending SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  else
    log "$name not running"
  fi
  rm -f "$pidfile"
}

stop_all() {
  stop_daemon slurmd "$SLURMD_PID"
  stop_daemon slurmctld "$CTLD_PID"
  stop_daemon munged "$MUNGE_PID"
}

case "$ACTION" in
  stop) stop_all; exit 0 ;;
  status)
    for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
      if pid_alive "${d#*:}"; then log "${d%%:*} running (pid $(cat "${d#*:}"))"; else log "${d%%:*} not running"; fi
    done
    command -v sinfo >/dev/null && sinfo || true
    exit 0 ;;
  start|restart) ;;
  *) die "usage: $0 [start|stop|status|restart]" ;;
esac
[ "$ACTION" = restart ] && stop_all

NODE="$(hostname -s)"

# ---- 1. packages ---------------------------------------------------------------------------
need_install=0
for b in munged slurmctld slurmd sinfo sbatch scontrol; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
  log "installing munge slurmctld slurmd slurm-client with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' postinst from trying to start services (no init system to start them).
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed: $(slurmctld -V 2>/dev/null || true)"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# ---- 2. munge ------------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s "$MUNGE_KEY" ]; then
  log "creating munge key $MUNGE_KEY"
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$MUNGE_KEY" --force
  else
    dd if=/dev/urandom bs=1 count=1024 of="$MUNGE_KEY" status=none
  fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 "$MUNGE_KEY"
if pid_alive "$MUNGE_PID" && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running"
else
  rm -f "$MUNGE_PID" /run/munge/munge.socket.2*
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for i in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n | unmunge >/dev/null || { log_tails; die "munged does not work"; }
fi

# ---- 3. slurm.conf -------------------------------------------------------------------------
CPUS="$(nproc --all)"
MEM_MB="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"  # = free -m's total (procps may be absent)
HEADROOM_MB="${SLURM_MEM_HEADROOM_MB:-$(( MEM_MB / 10 > 1024 ? MEM_MB / 10 : 1024 ))}"
REAL_MB=$(( MEM_MB - HEADROOM_MB ))
[ "$REAL_MB" -ge 256 ] || REAL_MB=256
mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"
chmod 0755 "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"
tmp_conf="$(mktemp)"
cat > "$tmp_conf" <<EOF
# Generated by scripts/slurm_cluster.sh: one-node cluster for tests/CI. Do not edit by hand.
ClusterName=lcc
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=${CTLD_STATE}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
MaxArraySize=10001
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REAL_MB} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
conf_changed=0
if ! cmp -s "$tmp_conf" "$CONF"; then
  log "writing $CONF (node $NODE: CPUs=$CPUS RealMemory=${REAL_MB}MB, partition $PARTITION)"
  install -m 0644 "$tmp_conf" "$CONF"
  conf_changed=1
fi
rm -f "$tmp_conf"
# cgroup.conf is not used with proctrack/linuxproc + task/none, but keep slurmd from looking for one.
[ -f "$CONF_DIR/cgroup.conf" ] || echo "CgroupPlugin=autodetect" > "$CONF_DIR/cgroup.conf"

if [ "$conf_changed" = 1 ] && { pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; }; then
  log "config changed: restarting slurm daemons"
  stop_daemon slurmd "$SLURMD_PID"
  stop_daemon slurmctld "$CTLD_PID"
fi

# ---- 4. daemons ----------------------------------------------------------------------------
if pid_alive "$CTLD_PID" && scontrol ping 2>/dev/null | grep -q UP; then
  log "slurmctld already running"
else
  stop_daemon slurmctld "$CTLD_PID" >/dev/null
  log "starting slurmctld"
  slurmctld || { log_tails; die "slurmctld failed to start"; }
  for i in $(seq 1 "$((WAIT_S * 5))"); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
  done
  scontrol ping 2>/dev/null | grep -q UP || { log_tails; die "slurmctld did not answer within ${WAIT_S}s"; }
fi
if pid_alive "$SLURMD_PID"; then
  log "slurmd already running"
else
  log "starting slurmd"
  slurmd || { log_tails; die "slurmd failed to start"; }
fi

# ---- 5. wait for the node ------------------------------------------------------------------
node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
deadline=$(( $(date +%s) + WAIT_S ))
resumed=0
while :; do
  state="$(node_state)"
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    *drain*|*down*|*fail*)
      if [ "$resumed" -lt 3 ] && [[ "$state" != *"*"* ]]; then  # "*" = not responding yet: wait
        log "node $NODE is $state ($(sinfo -h -N -n "$NODE" -o '%E')): resuming"
        scontrol update NodeName="$NODE" State=RESUME || true
        resumed=$((resumed + 1))
      fi ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    sinfo -N -l >&2 || true
    log_tails
    die "node $NODE not idle after ${WAIT_S}s (state: '${state:-unknown}')"
  fi
  sleep 0.5
done
log "cluster up: node $NODE is $state"
sinfo
