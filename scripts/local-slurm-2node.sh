#!/usr/bin/env bash
# A second, separate SLURM cluster of two nodes, n1 and n2, on this machine, for the multi-node tests.
#
#   scripts/local-slurm-2node.sh start    configure and start munged, slurmctld and one slurmd per node;
#                                          returns once both nodes are idle (a no-op when already up)
#   scripts/local-slurm-2node.sh stop     cancel its jobs, stop its daemons (by pid file), remove the
#                                          nodes' cgroup directories and the n1/n2 host names
#   scripts/local-slurm-2node.sh status   daemons and sinfo; exit 0 if healthy
#   scripts/local-slurm-2node.sh env      prints `export SLURM_CONF=...`: eval it to talk to this cluster
#
# It shares nothing with the single-node cluster of scripts/local-slurm.sh (which owns /etc/slurm):
# its own cluster name, ports, munged (own socket and key), state directory and configuration, which
# every command reads through SLURM_CONF=$LOCAL_SLURM2_DIR/etc/slurm.conf. Accounting is off (no
# slurmdbd): sacct does not answer here, so finished jobs stay in `scontrol show job` for MinJobAge.
#
# Only loopback addresses: both slurmd listen on 127.0.0.1, each on its own port, and each runs in its
# own UTS namespace (`unshare --uts`, then `hostname n1`) so that jobs see the node's own hostname.
# Never `ip netns exec`: it remounts /sys, and slurmd then finds no cgroup filesystem. Jobs name their
# rendezvous host by node name (MASTER_ADDR=n1), so n1 and n2 are added to /etc/hosts as 127.0.0.1
# (marked lines, removed by stop) unless they already resolve.
#
# Every start is a fresh cluster: new state, job ids from 1 again; so each start writes a new
# $STATE/generation, and a submitit folder must never be reused across starts (a reused folder
# returns an earlier run's results for the same job id).
#
# Memory enforcement as the single-node cluster's (its mem_mode, which slurmd has accepted here), else
# as local-slurm.sh probes it: cgroup v1 (per node slurm_n1, slurm_n2) where writable, else linuxproc
# with OverMemoryKill.
#
# Environment:
#   LOCAL_SLURM2_DIR       state dir (default /tmp/local-slurm-2node)
#   LOCAL_SLURM2_TIMEOUT   seconds to wait for the nodes (default 60)
#   LOCAL_SLURM2_PORT      first of its four ports: slurmctld, n1, n2 (default 6917)
#   LOCAL_SLURM_MEM_MODE   cgroup | linuxproc: force a memory enforcement mode
#   LOCAL_SLURM_DIR        the single-node cluster's state dir, for its memory mode (default /tmp/local-slurm)
#
# Requires root and an installed slurm-wlm and munge (scripts/local-slurm.sh start installs them).
set -euo pipefail

STATE="${LOCAL_SLURM2_DIR:-/tmp/local-slurm-2node}"
TIMEOUT="${LOCAL_SLURM2_TIMEOUT:-60}"
PORT="${LOCAL_SLURM2_PORT:-6917}"
CLUSTER=twonode
PARTITION=twonode
NODES=(n1 n2)
HOSTS_MARK="# local-slurm-2node"
# The single-node cluster's state: its memory mode has survived slurmd's own cgroup checks on this machine.
ONE_NODE_STATE="${LOCAL_SLURM_DIR:-/tmp/local-slurm}"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

RUN="$STATE/run"
LOG="$STATE/log"
ETC="$STATE/etc"
MUNGE_DIR="$STATE/munge"
MUNGE_SOCK="$MUNGE_DIR/munge.socket"
export SLURM_CONF="$ETC/slurm.conf"
CTLD_HOST="$(hostname -s)"

log() { printf '[local-slurm-2node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True when $1 is a live (non-zombie) process whose command name is $2.
pid_alive() {
    local pid="$1" name="$2" stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# $1: pid file name under $RUN (munged, slurmctld, slurmd-n1, ...), $2: the command name.
pid_of() { [[ -s "$RUN/$1.pid" ]] && head -n1 "$RUN/$1.pid" | tr -d '[:space:]'; }
is_up() { local pid; pid="$(pid_of "$1")" || return 1; pid_alive "$pid" "$2"; }

# Start "${@:2}" detached (own session, output to $LOG/$1.stdout); records its pid in $RUN/$1.pid.
spawn() {
    local name="$1" pid i; shift
    setsid "$@" </dev/null >>"$LOG/$name.stdout" 2>&1 &
    pid=$!
    echo "$pid" >"$RUN/$name.pid"
    for ((i = 0; i < 200; i++)); do   # until setsid (and unshare) have exec'd the daemon itself
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" =~ ^(setsid|setpriv|unshare|sh)$ ]] || break
        sleep 0.05
    done
}

wait_for() {
    local what="$1" secs="$2" deadline; shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then log "timed out after ${secs}s waiting for $what"; return 1; fi
        sleep 0.2
    done
}

fail_start() {
    local f
    log "ERROR: $*"
    for f in "$LOG"/*.log "$LOG"/*.stdout; do
        [[ -s "$f" ]] || continue
        echo "----- last lines of $f -----" >&2
        grep -v -e pmix -e 'MPI: Cannot create context' "$f" | tail -n 12 >&2 || true
    done
    log "ERROR: $* (logs above; stop what did start with: $0 stop)"
    exit 1
}

stop_pid() {
    local name="$1" comm="$2" pid i
    pid="$(pid_of "$name")" || { rm -f "$RUN/$name.pid"; return 0; }
    if pid_alive "$pid" "$comm"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do pid_alive "$pid" "$comm" || break; sleep 0.1; done
        if pid_alive "$pid" "$comm"; then
            log "$name did not stop within 10s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.3
        fi
    fi
    rm -f "$RUN/$name.pid"
}

# ------------------------------------------------------------------- config ---

probe_mem_mode() {
    local base=/sys/fs/cgroup ctl probe
    [[ "$(stat -f -c %T "$base" 2>/dev/null || true)" =~ ^(tmpfs|cgroupfs)$ ]] || { echo linuxproc; return; }
    for ctl in memory freezer; do
        probe="$base/$ctl/local-slurm-2node-probe.$$"
        [[ "$(stat -f -c %T "$base/$ctl" 2>/dev/null)" == cgroupfs ]] && mkdir "$probe" 2>/dev/null ||
            { echo linuxproc; return; }
        if [[ "$ctl" == memory ]] && ! echo 104857600 >"$probe/memory.limit_in_bytes" 2>/dev/null; then
            rmdir "$probe"; echo linuxproc; return
        fi
        rmdir "$probe" 2>/dev/null || true
    done
    echo cgroup
}

write_configs() {
    local mode="$1" line cpus total realmem defmem mem_conf node i
    line="$(slurmd -C 2>/dev/null | head -n1)"
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")"
    total="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")"
    [[ -n "$cpus" && -n "$total" ]] || die "cannot parse CPUs/RealMemory from slurmd -C: $line"
    # The two nodes share this machine's memory: each advertises a third of it.
    realmem=$((total / 3))
    defmem=$((realmem / cpus < 1024 ? realmem / cpus : 1024))
    if [[ "$mode" == cgroup ]]; then
        mem_conf="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup"
        cat >"$ETC/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainDevices=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedRAMSpace=100
AllowedSwapSpace=0
EOF
    else
        mem_conf="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill"
        printf 'ConstrainCores=no\nConstrainDevices=no\nConstrainRAMSpace=no\n' >"$ETC/cgroup.conf"
    fi
    cat >"$ETC/slurm.conf" <<EOF
# Generated by scripts/local-slurm-2node.sh (memory enforcement: $mode). State: $STATE
ClusterName=$CLUSTER
SlurmctldHost=$CTLD_HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=5
CredType=cred/munge
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=900
KillOnBadExit=1
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
$mem_conf
JobAcctGatherFrequency=task=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
EOF
    i=0
    for node in "${NODES[@]}"; do
        i=$((i + 1))
        echo "NodeName=$node NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$cpus RealMemory=$realmem State=UNKNOWN" \
            >>"$ETC/slurm.conf"
    done
    echo "PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP" \
        >>"$ETC/slurm.conf"
    echo "$mode" >"$STATE/mem_mode"
}

# Jobs resolve node names (the rendezvous host is the first node's name): n1, n2 -> 127.0.0.1.
add_host_names() {
    local node missing=()
    for node in "${NODES[@]}"; do
        getent hosts "$node" >/dev/null 2>&1 || missing+=("$node")
    done
    ((${#missing[@]} == 0)) && return 0
    { printf '127.0.0.1 %s %s\n' "${missing[*]}" "$HOSTS_MARK" >>/etc/hosts; } 2>/dev/null ||
        die "${missing[*]} do not resolve and /etc/hosts is not writable: add '127.0.0.1 ${NODES[*]}' to it"
}

remove_host_names() {
    grep -q -- "$HOSTS_MARK" /etc/hosts 2>/dev/null || return 0
    # /etc/hosts may be a bind mount (containers): rewrite it in place rather than replacing the file.
    local kept
    kept="$(grep -v -- "$HOSTS_MARK" /etc/hosts || true)"
    printf '%s\n' "$kept" >/etc/hosts
}

# ------------------------------------------------------------------ daemons ---

munge_works() { munge -S "$MUNGE_SOCK" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }

start_munged() {
    id munge >/dev/null 2>&1 || die "no munge user (install munge: scripts/local-slurm.sh start does)"
    install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
    chmod 0755 "$MUNGE_DIR"   # clients reach the socket inside it
    spawn munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground --force \
        --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" --seed-file="$MUNGE_DIR/munged.seed" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$LOG/munged.log"
    wait_for munged 15 munge_works || fail_start "munged did not start"
}

nodes_ready() {
    local states
    states="$(sinfo -h -N -o '%N %T' 2>/dev/null)" || return 1
    for node in "${NODES[@]}"; do
        grep -Eq "^$node (idle|mixed|allocated|completing)$" <<<"$states" || return 1
    done
}

healthy() {
    local node
    is_up munged munged && is_up slurmctld slurmctld || return 1
    for node in "${NODES[@]}"; do is_up "slurmd-$node" slurmd || return 1; done
    nodes_ready
}

# Per-node cgroup directories (slurm_n1, slurm_n2 under each controller), deepest first.
remove_cgroups() {
    local dir node
    for node in "${NODES[@]}"; do
        for dir in /sys/fs/cgroup/*/"slurm_$node"; do
            [[ -d "$dir" ]] || continue
            find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            [[ ! -d "$dir" ]] || log "could not remove $dir (processes still in it?)"
        done
    done
}

spawn_slurmd() {
    local node="$1"
    if [[ "$(cat "$STATE/hostnames")" == own ]]; then
        spawn "slurmd-$node" unshare --uts sh -c 'hostname "$1" && exec slurmd -D -N "$1"' sh "$node"
    else
        spawn "slurmd-$node" slurmd -D -N "$node"
    fi
}

# Until both nodes are idle. A slurmd killed from outside while the cluster comes up (a machine still
# tearing down an earlier user's processes) is started again, at most twice in all.
wait_for_nodes() {
    local deadline=$((SECONDS + TIMEOUT)) restarts=0 node
    until nodes_ready; do
        for node in "${NODES[@]}"; do
            is_up "slurmd-$node" slurmd && continue
            ((restarts < 2)) || fail_start "slurmd of $node exited"
            restarts=$((restarts + 1))
            log "slurmd of $node exited; starting it again ($restarts/2)"
            spawn_slurmd "$node"
        done
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            fail_start "nodes not idle after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
}

cmd_start() {
    if healthy; then
        log "already running (generation $(cat "$STATE/generation" 2>/dev/null))"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "start needs root"
    for b in slurmctld slurmd munged unshare sinfo; do
        command -v "$b" >/dev/null 2>&1 ||
            die "$b not found (install slurm-wlm and munge: scripts/local-slurm.sh start)"
    done
    local t0 node mode
    t0="$(date +%s.%N)"
    cmd_stop quiet   # whatever is left of an earlier start
    rm -rf "$STATE/spool" "$RUN" "$LOG"
    mkdir -p "$RUN" "$LOG" "$ETC" "$STATE/spool/slurmctld"
    chmod 0755 "$STATE"
    cd "$STATE"   # the daemons inherit the working directory
    mode="${LOCAL_SLURM_MEM_MODE:-$(cat "$ONE_NODE_STATE/mem_mode" 2>/dev/null || probe_mem_mode)}"
    write_configs "$mode"
    add_host_names
    start_munged
    spawn slurmctld slurmctld -D -i
    wait_for slurmctld 30 scontrol ping || fail_start "slurmctld did not start"
    # A UTS namespace needs CAP_SYS_ADMIN, which an unprivileged container lacks: then both slurmd share
    # this machine's host name (jobs still see SLURMD_NODENAME=n1/n2, and n1/n2 still resolve).
    if unshare --uts true 2>/dev/null; then
        echo own >"$STATE/hostnames"
    else
        echo shared >"$STATE/hostnames"
        log "unshare --uts is not permitted here: the nodes share the host name $(hostname)"
    fi
    for node in "${NODES[@]}"; do
        mkdir -p "$STATE/spool/slurmd-$node"
        spawn_slurmd "$node"
    done
    wait_for_nodes
    date +%s%N >"$STATE/generation"
    log "up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')s: nodes ${NODES[*]}," \
        "memory enforcement $mode, SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    local node ids
    if is_up slurmctld slurmctld; then
        ids="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        if [[ -n "${ids// /}" ]]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            wait_for "jobs to end" 15 test -z "$(squeue -h -o %i 2>/dev/null)" || true
        fi
    fi
    for node in "${NODES[@]}"; do stop_pid "slurmd-$node" slurmd; done
    stop_pid slurmctld slurmctld
    stop_pid munged munged
    remove_cgroups
    remove_host_names
    [[ "${1:-}" == quiet ]] || log "stopped"
}

cmd_status() {
    local ok=0 node
    for node in munged slurmctld "${NODES[@]/#/slurmd-}"; do
        if is_up "$node" "${node%%-*}"; then printf '%-10s up (pid %s)\n' "$node" "$(pid_of "$node")"
        else printf '%-10s down\n' "$node"; ok=1; fi
    done
    echo "state dir: $STATE, SLURM_CONF=$SLURM_CONF"
    if is_up slurmctld slurmctld; then sinfo -N 2>&1 || ok=1; fi
    ((ok)) || nodes_ready || { echo "nodes not ready"; ok=1; }
    return "$ok"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
