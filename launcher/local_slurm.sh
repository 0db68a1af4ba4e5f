#!/usr/bin/env bash
# A real single-node Slurm (Debian's slurmctld, slurmd, munge) for tests; stops exactly the daemons
# it started, by pid.   usage: launcher/local_slurm.sh start|stop|status
# Needs root and Debian's apt (installs the packages on first use, ~10 s).
set -euo pipefail
STATE=${LOCAL_SLURM_STATE:-/tmp/nemo_gradalign_slurm}
CONF=/etc/slurm/slurm.conf

start() {
  [ "$(id -u)" = 0 ] || { echo "local_slurm: needs root" >&2; exit 3; }
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null || { echo "local_slurm: apt-get install failed" >&2; exit 4; }
  fi
  mkdir -p "$STATE" /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
  chown munge:munge /run/munge && chmod 0755 /run/munge
  [ -f /etc/munge/munge.key ] || (mungekey -c -f && chown munge:munge /etc/munge/munge.key)
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm
  rm -rf /var/spool/slurmctld/*            # a clean slate: job ids start at 1
  cpus=$(nproc)
  cat > "$CONF" <<CONFEOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
EnforcePartLimits=ALL
MinJobAge=3600
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost CPUs=$cpus RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONFEOF
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$STATE/munged.pid"
  /usr/sbin/slurmctld
  for _ in $(seq 50); do [ -s /run/slurm/slurmctld.pid ] && break; sleep 0.1; done
  cp /run/slurm/slurmctld.pid "$STATE/slurmctld.pid"
  /usr/sbin/slurmd -N localhost
  for _ in $(seq 50); do [ -s /run/slurm/slurmd.pid ] && break; sleep 0.1; done
  cp /run/slurm/slurmd.pid "$STATE/slurmd.pid"
  for _ in $(seq 100); do sinfo -h -o %t 2>/dev/null | grep -q idle && { echo "local_slurm: up"; return 0; }; sleep 0.2; done
  echo "local_slurm: node did not become idle" >&2; stop; exit 5
}

stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$STATE/$d.pid" ]; then
      pid=$(cat "$STATE/$d.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$STATE/$d.pid"
    fi
  done
  echo "local_slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
