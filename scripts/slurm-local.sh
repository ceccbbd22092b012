#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's slurm-wlm and munge, for the
# study tests (and for trying `vigil study submit` without a cluster):
#
#   bash scripts/slurm-local.sh up      # install if needed, configure, start; waits until the node is idle
#   bash scripts/slurm-local.sh down    # stop slurmd, slurmctld and munged
#   bash scripts/slurm-local.sh status  # exit 0 when it answers
#
# munged runs as the munge user (with /run/munge created for it); slurmctld and slurmd run as
# root with process tracking by /proc (proctrack/linuxproc), no task plugin and consumable
# cores (select/cons_tres), one node with this machine's CPUs in one partition, `debug`. It
# needs root (or password-less sudo) and apt for the first install. Its state and logs live in
# /var/lib/vigil-slurm; its config is /etc/slurm/slurm.conf, which it overwrites only when
# that file is one it wrote itself.
set -euo pipefail

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { printf 'slurm-local: error: %s\n' "$*" >&2; exit 1; }

sudo=""
if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || die "needs root or password-less sudo"
    sudo="sudo -n"
fi
state=/var/lib/vigil-slurm
conf=/etc/slurm/slurm.conf
marker="# written by vigil's scripts/slurm-local.sh"

install() {
    if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 &&
        command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install slurm-wlm and munge by hand"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; then
        $sudo apt-get update -q >/dev/null 2>&1 || true
        $sudo apt-get install -y -q slurm-wlm munge >/dev/null || die "apt-get could not install slurm-wlm and munge"
    fi
}

configure() {
    local host cpus memory
    host="$(hostname -s)"
    cpus="$(nproc)"
    memory="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
    if [[ -f "$conf" ]] && ! grep -qF "$marker" "$conf"; then
        die "$conf exists and was not written by this script; not touching it"
    fi
    $sudo mkdir -p /etc/slurm "$state/spool/slurmd" "$state/spool/slurmctld" "$state/log"
    $sudo tee "$conf" >/dev/null <<CONF
$marker
ClusterName=vigil-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmdSpoolDir=$state/spool/slurmd
StateSaveLocation=$state/spool/slurmctld
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            $sudo mungekey --create --force >/dev/null
        else
            $sudo sh -c 'dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null'
        fi
        $sudo chown munge:munge /etc/munge/munge.key
        $sudo chmod 0400 /etc/munge/munge.key
    fi
    $sudo mkdir -p /run/munge /var/log/munge /var/lib/munge
    $sudo chown munge:munge /run/munge /var/log/munge /var/lib/munge
    $sudo chmod 0755 /run/munge
    $sudo runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not answer"
}

up() {
    install
    configure
    start_munge
    pgrep -x slurmctld >/dev/null || $sudo slurmctld || die "slurmctld did not start; see $state/log/slurmctld.log"
    pgrep -x slurmd >/dev/null || $sudo slurmd || die "slurmd did not start; see $state/log/slurmd.log"
    local host
    host="$(hostname -s)"
    for _ in $(seq 100); do
        local node_state
        node_state="$(sinfo -h -n "$host" -o '%t' 2>/dev/null || true)"
        case "$node_state" in
            idle* | mix* | alloc*) say "ready: node $host ($node_state), partition debug"; return 0 ;;
            down* | drain*) $sudo scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    die "the node did not become idle; see $state/log/slurmctld.log and slurmd.log"
}

down() {
    $sudo pkill -x slurmd 2>/dev/null || true
    $sudo pkill -x slurmctld 2>/dev/null || true
    $sudo pkill -x munged 2>/dev/null || true
    for _ in $(seq 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || { say "stopped"; return 0; }
        sleep 0.1
    done
    die "the daemons did not stop"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo -h >/dev/null 2>&1 ;;
    *) die "usage: $0 up|down|status" ;;
esac
