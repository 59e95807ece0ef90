#!/bin/sh
# Make sure a one-node Slurm cluster answers, the way crunch-dispatch-slurm's workers run:
# install Debian's slurm-wlm and munge if missing, write /etc/slurm/slurm.conf and cgroup.conf
# for this host (proctrack/cgroup, task/cgroup, memory and cores constrained; cgroup v1 or v2
# detected), create the munge key if missing, start munged, slurmctld and slurmd in the
# background, and wait until the node is idle. Quick when all is already up; restarts what
# died; rewrites the config (and restarts the daemons) only when it changed. Fails loudly
# when it cannot: the Slurm tests must run, not be skipped. Run as root.
#
# No Epilog is configured: the tests show what crunch-run does on its own. (The operator
# Epilog, contrib/slurm-epilog.sh, is run directly by tests/slurm.rs.)
set -eu

say() { echo "ensure-slurm: $*" >&2; }
die() { say "$*"; exit 1; }

conf_dir=/etc/slurm
log_dir=/var/log/slurm

# --- state of the node, as sinfo sees it (empty when slurmctld does not answer) ------------
node_state() {
    timeout 10 sinfo -h -o %t 2>/dev/null | head -n 1 || true
}

# Alive when the PID in its pid file is that daemon.
daemon_alive() { # name pidfile
    pid=$(cat "$2" 2>/dev/null || true)
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$1" ]
}

# --- fast path: everything installed, configured as below, running and answering -----------
# (slurmctld notices a dead slurmd only after SlurmdTimeout, so look at the daemons too.)
node_is_usable() {
    daemon_alive munged /run/munge/munged.pid || return 1
    daemon_alive slurmctld /run/slurmctld.pid || return 1
    daemon_alive slurmd /run/slurmd.pid || return 1
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}

need_packages=""
command -v slurmctld >/dev/null 2>&1 || need_packages="$need_packages slurm-wlm"
command -v munged >/dev/null 2>&1 || need_packages="$need_packages munge"
[ "$(id -u)" = 0 ] || {
    if [ -z "$need_packages" ] && node_is_usable; then exit 0; fi
    die "Slurm is not installed and running, and only root can set it up"
}
if [ -n "$need_packages" ]; then
    say "installing$need_packages"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=${TMPDIR:-/tmp}/ensure-slurm-apt.log
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $need_packages; } \
        >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "installing$need_packages failed (log above)"
    fi
fi

# --- the configuration this host needs ---------------------------------------------------
host=$(hostname -s)
# slurmd -C prints what it detects (CPUs, sockets, cores, threads, RealMemory); a node whose
# configuration claims more than that is drained, so use its figures, memory a little lower.
hw=$(slurmd -C 2>/dev/null | head -n 1) || hw=""
case "$hw" in NodeName=*) ;; *) die "slurmd -C did not describe this node: $hw" ;; esac
mem=$(echo "$hw" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cpu_layout=$(echo "$hw" | tr ' ' '\n' |
    grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
[ -n "$mem" ] || die "no RealMemory in: $hw"
mem=$((mem * 95 / 100))
# sbatch --tmp (crunch-dispatch-slurm passes the sum of the tmp mounts' capacities) is checked
# against TmpDisk, the size of TmpFS (/tmp); slurmd drains a node that claims more than it has.
tmp_disk=$(df -Pm /tmp | awk 'NR == 2 { print int($2 * 9 / 10) }')

if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    cgroup_conf="CgroupPlugin=cgroup/v2
IgnoreSystemd=yes"
else
    cgroup_conf="CgroupPlugin=cgroup/v1"
fi

want_slurm_conf="# Written by crunch-run's tests/scripts/ensure-slurm.sh: a one-node test cluster.
ClusterName=crunchrun
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
KillWait=10
ReturnToService=2
TmpFS=/tmp
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 ${cpu_layout}RealMemory=$mem TmpDisk=$tmp_disk State=UNKNOWN
PartitionName=compute Nodes=$host Default=YES MaxTime=INFINITE State=UP
"
want_cgroup_conf="# Written by crunch-run's tests/scripts/ensure-slurm.sh.
$cgroup_conf
ConstrainCores=yes
ConstrainRAMSpace=yes
"

# Write $2 to $1 unless it already holds exactly that; say whether it changed.
changed=no
put() {
    if [ "$(cat "$1" 2>/dev/null || true)
" != "$2" ]; then
        printf '%s' "$2" >"$1.new" && mv "$1.new" "$1"
        changed=yes
    fi
}
mkdir -p "$conf_dir" "$log_dir" /var/spool/slurmctld /var/spool/slurmd
put "$conf_dir/slurm.conf" "$want_slurm_conf"
put "$conf_dir/cgroup.conf" "$want_cgroup_conf"

if [ "$changed" = no ] && [ -z "$need_packages" ] && node_is_usable; then
    exit 0
fi

# --- daemons ------------------------------------------------------------------------------
stop_daemon() { # name pidfile
    if daemon_alive "$1" "$2"; then
        pid=$(cat "$2")
        say "stopping $1 (pid $pid): its configuration changed"
        kill "$pid"
        i=0
        while [ -d "/proc/$pid" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
        [ ! -d "/proc/$pid" ] || die "$1 (pid $pid) did not stop"
    fi
}

show_logs_and_die() {
    say "$*"
    for f in /var/log/munge/munged.log "$log_dir/slurmctld.log" "$log_dir/slurmd.log"; do
        [ -f "$f" ] || continue
        echo "--- last lines of $f:" >&2
        tail -n 20 "$f" >&2
    done
    exit 1
}

if [ "$changed" = yes ]; then
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
fi

mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
fi
if ! daemon_alive munged /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || show_logs_and_die "munged did not start"
fi
i=0
until munge -n 2>/dev/null | unmunge >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -le 50 ] || show_logs_and_die "munge does not answer"
    sleep 0.2
done

# Both daemons fork into the background themselves once their configuration is read; an
# error before that is on their stderr, later ones in their logs.
if ! daemon_alive slurmctld /run/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld || show_logs_and_die "slurmctld did not start"
fi
if ! daemon_alive slurmd /run/slurmd.pid; then
    say "starting slurmd"
    slurmd || show_logs_and_die "slurmd did not start"
fi

# --- wait for the node --------------------------------------------------------------------
resumed=no
deadline=$(($(date +%s) + 60))
while :; do
    state=$(node_state)
    case "$state" in
        idle | mix | alloc) break ;;
        down* | drain* | drng* | fail*)
            # Left so by an earlier run (e.g. a kill that timed out); this is a test cluster.
            if [ "$resumed" = no ]; then
                say "node $host is $state; resuming it"
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                resumed=yes
            fi
            ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] ||
        show_logs_and_die "node $host is not idle after 60 s (sinfo: '${state:-no answer}')"
    sleep 0.5
done
say "slurm is up: node $host $state ($(sinfo -V))"
