#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for trying and testing the SLURM launcher.
#
#   scripts/slurm_local.sh up      install slurm-wlm and munge if missing (root only), write a config under
#                                  $SLURM_LOCAL_DIR, start munged, slurmctld and slurmd, wait until the node is idle
#   eval "$(scripts/slurm_local.sh env)"   point sbatch, sinfo, squeue, scancel at it (exports SLURM_CONF)
#   scripts/slurm_local.sh status  the daemons this script started and the node's state
#   scripts/slurm_local.sh down    cancel the cluster's jobs, stop the daemons this script started (by their pids)
#
# Everything (config, munge key, state, spool, logs, pid files) lives in SLURM_LOCAL_DIR
# (default: ${TMPDIR:-/tmp}/gia-bench-slurm). Running `up` twice is harmless; so is `down` twice.
# Settings: SLURM_LOCAL_DIR, SLURM_LOCAL_PORT (slurmctld's port; slurmd uses the next one; default 6817),
# SLURM_LOCAL_WAIT (seconds to wait for the node to become idle; default 60).
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/gia-bench-slurm}"
PORT="${SLURM_LOCAL_PORT:-6817}"
WAIT="${SLURM_LOCAL_WAIT:-60}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
DAEMONS=(slurmd slurmctld munged)   # stop order; started in reverse

say() { echo "slurm_local: $*" >&2; }
die() { say "error: $*"; exit 1; }

pid_of() {  # the pid of a daemon this script started, if it is still that daemon
    local name="$1" file="$DIR/$1.pid" pid
    [[ -s "$file" ]] || return 1
    pid="$(tr -dc '0-9' < "$file")"
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    # A recycled pid belongs to another program: never touch it.
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    echo "$pid"
}

install_packages() {
    local missing=()
    for tool in munged mungekey slurmctld slurmd sbatch sinfo; do
        command -v "$tool" > /dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" > /dev/null || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get > /dev/null; then
        die "missing ${missing[*]}: install the Debian/Ubuntu packages slurm-wlm and munge (or run this as root with apt-get)"
    fi
    say "installing slurm-wlm and munge with apt-get (missing: ${missing[*]})"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge > "$DIR/apt.log" 2>&1 \
        || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)"; }
}

write_config() {
    local cpus mem_mb
    cpus="$(nproc)"
    # 95% of the machine's memory: slurmd drains a node that reports less memory than configured.
    mem_mb="$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')"
    local user; user="$(id -un)"
    cat > "$CONF" <<EOF
# Written by scripts/slurm_local.sh: a single-node cluster for testing, no accounting.
ClusterName=gia-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
DefMemPerCPU=1024
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    pid_of munged > /dev/null && return 0
    mkdir -p "$DIR/munge"
    chmod 755 "$DIR/munge"   # clients of every user reach munged through its socket here; the key stays 0600
    if [[ ! -s "$DIR/munge/munge.key" ]]; then
        mungekey --create --keyfile="$DIR/munge/munge.key" 2> /dev/null \
            || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$DIR/munge/munge.key"
    # --force: munged would refuse a socket under a world-writable (sticky) /tmp.
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munge.seed" \
        || die "munged did not start (log: $DIR/munged.log)"
}

wait_idle() {
    local deadline=$((SECONDS + WAIT)) state=""
    while ((SECONDS < deadline)); do
        state="$(sinfo -h -N -n "$NODE" -o '%T' 2> /dev/null | head -n 1 || true)"
        [[ "$state" == "idle" ]] && return 0
        if [[ "$state" == drain* || "$state" == down* ]] && ((SECONDS > 10)); then
            scontrol update NodeName="$NODE" State=RESUME > /dev/null 2>&1 || true
        fi
        sleep 1
    done
    say "the node is not idle after ${WAIT}s (state: ${state:-no answer from slurmctld}); last log lines:"
    for log in slurmctld slurmd munged; do
        [[ -f "$DIR/$log.log" ]] && { echo "--- $DIR/$log.log" >&2; tail -n 8 "$DIR/$log.log" >&2; }
    done
    sinfo -R >&2 2> /dev/null || true
    die "the local cluster did not come up; see the logs above, then run: $0 down"
}

up() {
    [[ "$(id -u)" -eq 0 ]] || die "run as root (slurmd must be root to start jobs as their users), e.g. sudo $0 up"
    mkdir -p "$DIR/state" "$DIR/spool"
    chmod 755 "$DIR"
    install_packages
    export PATH="$PATH:/usr/sbin:/sbin" SLURM_CONF="$CONF"
    if pid_of slurmctld > /dev/null && pid_of slurmd > /dev/null && pid_of munged > /dev/null; then
        say "already up ($DIR)"
    else
        write_config
        start_munge
        pid_of slurmctld > /dev/null || slurmctld -f "$CONF" || die "slurmctld did not start (log: $DIR/slurmctld.log)"
        pid_of slurmd > /dev/null || slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start (log: $DIR/slurmd.log)"
    fi
    wait_idle
    say "up: partition debug, node $NODE ($(nproc) CPUs); in your shell: eval \"\$($0 env)\""
}

down() {
    export PATH="$PATH:/usr/sbin:/sbin" SLURM_CONF="$CONF"
    if pid_of slurmctld > /dev/null; then
        # Cancel what is still queued or running, so that no job step outlives its slurmd.
        timeout 10 scancel --partition=debug > /dev/null 2>&1 || true
        local deadline=$((SECONDS + 10))
        while ((SECONDS < deadline)) && [[ -n "$(timeout 5 squeue -h -o %i 2> /dev/null || true)" ]]; do sleep 1; done
    fi
    local stopped=()
    for name in "${DAEMONS[@]}"; do
        local pid
        pid="$(pid_of "$name")" || { rm -f "$DIR/$name.pid"; continue; }
        kill -TERM "$pid" 2> /dev/null || true
        for _ in $(seq 50); do [[ -d "/proc/$pid" ]] || break; sleep 0.2; done
        [[ -d "/proc/$pid" ]] && kill -KILL "$pid" 2> /dev/null
        rm -f "$DIR/$name.pid"
        stopped+=("$name ($pid)")
    done
    if [[ ${#stopped[@]} -gt 0 ]]; then say "stopped ${stopped[*]}"; else say "nothing to stop"; fi
}

status() {
    export PATH="$PATH:/usr/sbin:/sbin" SLURM_CONF="$CONF"
    local running=0
    for name in munged slurmctld slurmd; do
        if pid="$(pid_of "$name")"; then echo "$name: running (pid $pid)"; running=$((running + 1))
        else echo "$name: not running"; fi
    done
    ((running == 3)) && sinfo -N -n "$NODE" 2> /dev/null
    ((running == 3))
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
