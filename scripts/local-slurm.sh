#!/usr/bin/env bash
# Single-node SLURM cluster on localhost for integration tests.
#
#   scripts/local-slurm.sh start    install (if missing), configure and start
#                                    munged, mariadbd, slurmdbd, slurmctld, slurmd;
#                                    returns once the node is idle and sacct works
#   scripts/local-slurm.sh stop     cancel queued/running jobs and stop the daemons
#                                    this script started (by pid file only)
#   scripts/local-slurm.sh status   which daemons are up, sinfo; exit 0 if healthy
#
# All state (generated configs, spool dirs, logs, pid files, MariaDB datadir)
# lives under $LOCAL_SLURM_DIR (default /tmp/local-slurm). The configs are also
# installed into /etc/slurm, where every SLURM command (and so submitit) finds
# them without any extra environment.
#
# Memory enforcement (recorded in $STATE/mem_mode): "cgroup" where writable
# cgroup v1 memory/freezer hierarchies exist (proctrack/cgroup + task/cgroup;
# a job over --mem ends OUT_OF_MEMORY), else "linuxproc" (proctrack/linuxproc +
# jobacct_gather/linux with OverMemoryKill; such a job ends FAILED). If slurmd
# refuses the cgroup setup at runtime, start falls back to linuxproc.
# The node advertises 2 stand-in GPUs (gres gpu, character devices under
# $STATE/dev), so --gres=gpu:N / --gpus-per-node requests are schedulable.
#
# Environment:
#   LOCAL_SLURM_DIR        state dir (default /tmp/local-slurm)
#   LOCAL_SLURM_TIMEOUT    seconds to wait for the node / accounting (default 90)
#   LOCAL_SLURM_MEM_MODE   cgroup | linuxproc: skip the probe and force a memory
#                          enforcement mode (default: probe)
#   LOCAL_SLURM_DEF_MEM_PER_CPU   DefMemPerCPU in MB (default min(2048, RAM/CPUs))
#
# Requires root (or an already running cluster for `status`). Needs no systemd.
set -euo pipefail

STATE="${LOCAL_SLURM_DIR:-/tmp/local-slurm}"
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-90}"
CLUSTER=localcluster
PARTITION=debug
NGPUS=2
CONF_DIR=/etc/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

RUN="$STATE/run"
LOG="$STATE/log"
ETC="$STATE/etc"
MUNGE_DIR="$STATE/munge"
DB_DIR="$STATE/mysql"
DB_SOCK="$RUN/mysqld.sock"
NODE="$(hostname -s)"

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { printf '[local-slurm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pidfile_of() { echo "$RUN/$1.pid"; }

logfile_of() {
    case "$1" in
        munged) echo "$LOG/munged.stdout" ;;
        *) echo "$LOG/$1.log" ;;
    esac
}

# True when $1 is a live (non-zombie) process whose command name is $2.
# PID 1 here does not reap orphans, so a stopped daemon may linger as a zombie.
pid_alive() {
    local pid="$1" name="$2" stat comm
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "$name" ]]
}

daemon_pid() {
    local f
    f="$(pidfile_of "$1")"
    [[ -s "$f" ]] || return 1
    head -n1 "$f" | tr -d '[:space:]'
}

is_up() {
    local pid
    pid="$(daemon_pid "$1")" || return 1
    pid_alive "$pid" "$1"
}

# Start "$@" detached (own session, stdio to a log file) and record its pid.
# The command must stay in the foreground (no self-daemonizing).
spawn() {
    local name="$1"; shift
    local out="$LOG/$name.stdout" pid i
    setsid "$@" </dev/null >>"$out" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile_of "$name")"
    # setsid execs the daemon under its own pid; until it has, /proc names the pid "setsid" and
    # is_up would report a daemon that is still starting (on a loaded machine) as exited.
    for ((i = 0; i < 200; i++)); do
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == setsid ]] || break
        sleep 0.05
    done
}

# Wait up to $2 seconds for command "${@:3}" to succeed; $1 names what we wait for.
wait_for() {
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

print_log_tails() {
    local d f
    for d in "${DAEMONS[@]}"; do
        f="$(logfile_of "$d")"
        [[ -s "$f" ]] || f="$LOG/$d.stdout"
        [[ -s "$f" ]] || continue
        echo "----- $d: last lines of $f -----" >&2
        # The Debian build tries to load PMIx for every MPI plugin; that noise says nothing.
        grep -v -e 'pmix' -e 'MPI: Cannot create context' "$f" | tail -n 15 >&2 || true
    done
}

fail_start() {
    log "ERROR: $*"
    print_log_tails
    log "ERROR: $* (logs above; daemons that did start keep running: $0 stop)"
    exit 1
}

# ---------------------------------------------------------------- install ---

PKGS=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
BINS=(slurmctld slurmd sinfo sbatch sacct sacctmgr slurmdbd munged mungekey
    mariadbd mariadb-install-db mariadb)

missing_bins() {
    local b out=()
    for b in "${BINS[@]}"; do
        command -v "$b" >/dev/null 2>&1 || out+=("$b")
    done
    echo "${out[*]}"
}

apt_candidates_known() {
    local p cand
    for p in "${PKGS[@]}"; do
        cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
        [[ -n "$cand" && "$cand" != "(none)" ]] || return 1
    done
}

install_packages() {
    local missing
    missing="$(missing_bins)"
    [[ -z "$missing" ]] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing $missing and apt-get is not available"
    log "installing SLURM/munge/MariaDB packages (missing: $missing)"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the package scripts from starting the stock services.
    local policy=/usr/sbin/policy-rc.d backup=""
    if [[ -e "$policy" ]]; then
        backup="$(mktemp)"
        cp -p "$policy" "$backup"
    fi
    # shellcheck disable=SC2064
    trap "if [[ -n '$backup' ]]; then mv -f '$backup' '$policy'; else rm -f '$policy'; fi" EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    local rc=0
    {
        if ! apt_candidates_known; then
            apt-get update -qq
        fi
        if ! apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >"$LOG/apt.log" 2>&1; then
            log "apt-get install failed; refreshing package lists and retrying"
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >"$LOG/apt.log" 2>&1
        fi
    } || rc=$?
    if [[ -n "$backup" ]]; then
        mv -f "$backup" "$policy"
    else
        rm -f "$policy"
    fi
    trap - EXIT
    if ((rc != 0)); then
        tail -n 30 "$LOG/apt.log" >&2 || true
        die "package installation failed"
    fi
    missing="$(missing_bins)"
    [[ -z "$missing" ]] || die "still missing after install: $missing"
}

# --------------------------------------------------------- memory enforcement ---

# cgroup when writable cgroup v1 memory and freezer hierarchies exist, else linuxproc.
probe_mem_mode() {
    local base=/sys/fs/cgroup fstype ctl probe ok=1
    fstype="$(stat -f -c %T "$base" 2>/dev/null || true)"
    if [[ "$fstype" == cgroup2fs || -z "$fstype" ]]; then
        echo linuxproc; return
    fi
    for ctl in memory freezer; do
        probe="$base/$ctl/local-slurm-probe.$$"
        if [[ "$(stat -f -c %T "$base/$ctl" 2>/dev/null)" != cgroupfs ]] ||
            ! mkdir "$probe" 2>/dev/null; then
            ok=0; break
        fi
        if [[ "$ctl" == memory ]] &&
            ! echo 104857600 >"$probe/memory.limit_in_bytes" 2>/dev/null; then
            ok=0
        fi
        rmdir "$probe" 2>/dev/null || true
        ((ok)) || break
    done
    if ((ok)); then echo cgroup; else echo linuxproc; fi
}

mem_mode() {
    if [[ -n "${LOCAL_SLURM_MEM_MODE:-}" ]]; then
        [[ "$LOCAL_SLURM_MEM_MODE" == cgroup || "$LOCAL_SLURM_MEM_MODE" == linuxproc ]] ||
            die "LOCAL_SLURM_MEM_MODE must be cgroup or linuxproc"
        echo "$LOCAL_SLURM_MEM_MODE"
    elif [[ -e "$STATE/cgroup_unusable" ]]; then
        echo linuxproc
    else
        probe_mem_mode
    fi
}

# ------------------------------------------------------------------ configs ---

db_password() {
    local f="$ETC/db_password"
    if [[ ! -s "$f" ]]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f")
    fi
    cat "$f"
}

write_configs() {
    local mode="$1"
    local node_line cpus realmem total defmem
    node_line="$(slurmd -C 2>/dev/null | head -n1)"
    [[ "$node_line" == NodeName=* ]] || die "slurmd -C gave no node line"
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")"
    total="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
    [[ -n "$cpus" && -n "$total" ]] || die "cannot parse CPUs/RealMemory from: $node_line"
    realmem=$((total * 85 / 100))
    defmem="${LOCAL_SLURM_DEF_MEM_PER_CPU:-$((realmem / cpus < 2048 ? realmem / cpus : 2048))}"
    node_line="$(sed -e 's/ RealMemory=[0-9]*//' -e 's/ UpTime=.*//' <<<"$node_line")"

    local mem_conf
    if [[ "$mode" == cgroup ]]; then
        mem_conf="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup"
    else
        mem_conf="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill"
    fi

    mkdir -p "$ETC" "$STATE/dev"
    local i files=()
    for ((i = 0; i < NGPUS; i++)); do
        # Stand-in GPU device files: character devices like /dev/null.
        if [[ ! -c "$STATE/dev/gpu$i" ]]; then
            rm -f "$STATE/dev/gpu$i"
            mknod -m 666 "$STATE/dev/gpu$i" c 1 3
        fi
        files+=("$STATE/dev/gpu$i")
    done

    cat >"$ETC/slurm.conf" <<EOF
# Generated by scripts/local-slurm.sh (memory enforcement: $mode). State: $STATE
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=10
KillOnBadExit=1
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
$mem_conf
JobAcctGatherFrequency=task=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
GresTypes=gpu
$node_line RealMemory=$realmem Gres=gpu:$NGPUS NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

    local gpufiles
    gpufiles="$(IFS=,; echo "${files[*]}")"
    cat >"$ETC/gres.conf" <<EOF
# Stand-in GPUs (character devices), so GPU requests can be scheduled without GPUs.
NodeName=$NODE Name=gpu File=$gpufiles
EOF

    if [[ "$mode" == cgroup ]]; then
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
        cat >"$ETC/cgroup.conf" <<EOF
ConstrainCores=no
ConstrainDevices=no
ConstrainRAMSpace=no
EOF
    fi

    (umask 077; cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$(db_password)
EOF
)

    mkdir -p "$CONF_DIR"
    local f
    SLURM_CONF_CHANGED=0
    for f in slurm.conf gres.conf cgroup.conf; do
        cmp -s "$ETC/$f" "$CONF_DIR/$f" || SLURM_CONF_CHANGED=1
        install -m 0644 "$ETC/$f" "$CONF_DIR/$f"
    done
    DBD_CONF_CHANGED=0
    cmp -s "$ETC/slurmdbd.conf" "$CONF_DIR/slurmdbd.conf" || DBD_CONF_CHANGED=1
    install -m 0600 "$ETC/slurmdbd.conf" "$CONF_DIR/slurmdbd.conf"
    echo "$mode" >"$STATE/mem_mode"
}

# ------------------------------------------------------------------ daemons ---

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munged() {
    if is_up munged; then return 0; fi
    if munge_works; then
        log "a munged not started by this script is already running; using it"
        return 0
    fi
    id munge >/dev/null 2>&1 || die "no munge user"
    local key=/etc/munge/munge.key
    if [[ ! -s "$key" ]]; then
        log "creating munge key"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$key"
    chmod 0400 "$key"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
    rm -f "$(pidfile_of munged)"
    spawn munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --force \
        --seed-file="$MUNGE_DIR/munged.seed" --pid-file="$MUNGE_DIR/munged.pid"
    wait_for "munged" 15 munge_works || fail_start "munged did not start"
}

db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }
db_ping() { db_sql -e 'SELECT 1' ; }

start_mariadbd() {
    if ! is_up mariadbd; then
        if [[ ! -d "$DB_DIR/mysql" ]]; then
            log "initialising MariaDB datadir $DB_DIR"
            rm -rf "$DB_DIR"
            mkdir -p "$DB_DIR"
            mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" \
                --auth-root-authentication-method=socket --skip-test-db \
                >"$LOG/mariadb-install-db.log" 2>&1 ||
                { tail -n 30 "$LOG/mariadb-install-db.log" >&2; die "mariadb-install-db failed"; }
        fi
        rm -f "$DB_SOCK"
        spawn mariadbd mariadbd --no-defaults --user=root --datadir="$DB_DIR" \
            --socket="$DB_SOCK" --skip-networking --pid-file="$RUN/mariadbd.own.pid" \
            --log-error="$LOG/mariadbd.log" --innodb-buffer-pool-size=64M \
            --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
            --max-connections=64
    fi
    wait_for "mariadbd" 60 db_ping || fail_start "mariadbd did not start"
    local pw
    pw="$(db_password)"
    db_sql <<EOF || fail_start "could not create the accounting database user"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_works() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if ! is_up slurmdbd; then
        # slurmdbd reaches MariaDB through its private socket.
        spawn slurmdbd env MYSQL_UNIX_PORT="$DB_SOCK" slurmdbd -D
    fi
    wait_for "slurmdbd" 60 dbd_works || fail_start "slurmdbd did not start"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail_start "sacctmgr add cluster failed"
    fi
}

ctld_works() { scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    if ! is_up slurmctld; then
        spawn slurmctld slurmctld -D
    fi
    wait_for "slurmctld" 30 ctld_works || fail_start "slurmctld did not start"
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

SLURMD_LOG_OFFSET=0

start_slurmd() {
    if ! is_up slurmd; then
        SLURMD_LOG_OFFSET="$(stat -c %s "$LOG/slurmd.log" 2>/dev/null || echo 0)"
        spawn slurmd slurmd -D
    fi
}

# Did the slurmd started last complain about cgroups?
slurmd_cgroup_failure() {
    tail -c "+$((SLURMD_LOG_OFFSET + 1))" "$LOG/slurmd.log" 2>/dev/null | grep -qi cgroup
}

# Did the slurmd started last log an error or a fatal line?
slurmd_logged_error() {
    tail -c "+$((SLURMD_LOG_OFFSET + 1))" "$LOG/slurmd.log" 2>/dev/null |
        grep -v "mpi/pmix\|MPI: Cannot create context" | grep -qi "error\|fatal"
}

stop_daemon() {
    local name="$1" pid i
    local f
    f="$(pidfile_of "$name")"
    pid="$(daemon_pid "$name")" || { rm -f "$f"; return 0; }
    if pid_alive "$pid" "$name"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            pid_alive "$pid" "$name" || break
            sleep 0.2
        done
        if pid_alive "$pid" "$name"; then
            log "$name did not stop within 20s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -f "$f"
}

# ----------------------------------------------------------------- commands ---

healthy() {
    is_up slurmctld && is_up slurmd && is_up slurmdbd && node_ready && sacct -n -X >/dev/null 2>&1
}

# Up, healthy, configured from this state dir and in the requested memory mode.
already_running() {
    local current
    grep -q "State: $STATE\$" "$CONF_DIR/slurm.conf" 2>/dev/null || return 1
    current="$(cat "$STATE/mem_mode" 2>/dev/null || true)"
    [[ -z "${LOCAL_SLURM_MEM_MODE:-}" || "$LOCAL_SLURM_MEM_MODE" == "$current" ]] || return 1
    (is_up munged || munge_works) && is_up mariadbd && healthy
}

cmd_start() {
    if already_running; then
        log "already running ($(cat "$STATE/mem_mode") memory enforcement)"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "start needs root"
    mkdir -p "$STATE" "$RUN" "$LOG" "$ETC" "$STATE/spool/slurmctld" "$STATE/spool/slurmd"
    chmod 0755 "$STATE"
    # The daemons inherit this directory, and slurmstepd complains into every job's stderr when
    # it has gone (a cluster started from a checkout that was later deleted): use the state dir.
    cd "$STATE"
    local t0=$SECONDS
    install_packages
    local mode
    mode="$(mem_mode)"
    write_configs "$mode"
    # Daemons still running from before must pick up a changed configuration.
    if ((SLURM_CONF_CHANGED)); then
        stop_daemon slurmd
        stop_daemon slurmctld
    fi
    if ((DBD_CONF_CHANGED)); then
        stop_daemon slurmdbd
    fi
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    local deadline=$((SECONDS + TIMEOUT)) resume_at=$((SECONDS + 5)) st restarts=0
    until node_ready; do
        if ! is_up slurmd; then
            if [[ "$mode" == cgroup && -z "${LOCAL_SLURM_MEM_MODE:-}" ]] &&
                slurmd_cgroup_failure; then
                log "slurmd failed with cgroup enforcement; falling back to linuxproc"
                print_log_tails
                mode=linuxproc
                touch "$STATE/cgroup_unusable"
                write_configs "$mode"
                stop_daemon slurmctld
                start_slurmctld
                start_slurmd
                continue
            fi
            # A slurmd that leaves nothing in its log was killed from outside (a machine that is
            # still tearing down the processes of an earlier user): start it again, a bounded
            # number of times, before calling the cluster broken.
            if ((restarts < 2)) && ! slurmd_logged_error; then
                restarts=$((restarts + 1))
                log "slurmd exited without an error in its log; starting it again ($restarts/2)"
                sleep 2
                start_slurmd
                continue
            fi
            fail_start "slurmd exited"
        fi
        st="$(node_state)"
        # A node left down/drained by an earlier run: resume it once.
        if ((resume_at && SECONDS >= resume_at)) && [[ "$st" =~ ^(down|drain|fail) ]]; then
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            resume_at=0
        fi
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            fail_start "node $NODE not idle after ${TIMEOUT}s (state: ${st:-unknown})"
        fi
        sleep 0.5
    done
    wait_for "sacct" 30 sacct -n -X || fail_start "sacct does not work"
    log "up in $((SECONDS - t0))s: node $NODE $(node_state)," \
        "memory enforcement: $mode, state dir: $STATE"
}

no_jobs() { [[ -z "$(squeue -h -o %i 2>/dev/null)" ]]; }

cmd_stop() {
    if is_up slurmctld && ctld_works; then
        local ids
        ids="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        if [[ -n "${ids// /}" ]]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            wait_for "jobs to end" 15 no_jobs || true
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[i]}"
    done
    log "stopped"
}

cmd_status() {
    local d pid ok=0
    for d in "${DAEMONS[@]}"; do
        if is_up "$d"; then
            printf '%-10s up (pid %s)\n' "$d" "$(daemon_pid "$d")"
        elif [[ "$d" == munged ]] && munge_works; then
            printf '%-10s up (not started by this script)\n' "$d"
        else
            printf '%-10s down\n' "$d"
            ok=1
        fi
    done
    [[ -s "$STATE/mem_mode" ]] && echo "memory enforcement: $(cat "$STATE/mem_mode")"
    echo "state dir: $STATE"
    # sinfo retries for ~10s when no controller answers: ask only when ours is up.
    if is_up slurmctld; then
        sinfo 2>&1 || ok=1
    fi
    if ((ok == 0)) && ! { node_ready && sacct -n -X >/dev/null 2>&1; }; then
        echo "node not ready or accounting not answering"
        ok=1
    fi
    return "$ok"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
