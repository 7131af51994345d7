# Names and places of the several-node Slurm on emulated hosts, sourced by
# .ci/slurm-multi-up.sh and .ci/slurm-multi-down.sh (and read by
# tests/multihost/slurm_nodes.py, which keeps the same values).
#
# The names are fixed and distinct from everything else on the machine: the
# emulated-host tests use cplh-*/cplb*/cplv* in 10.78.0.0/16, the single-node
# Slurm the default ports and /etc/slurm.
SLURM_CONF=/etc/slurm-multi/slurm.conf
STATE=/run/slurm-multi            # pid files (tmpfs: gone after a reboot, as the namespaces are)
SPOOL=/var/spool/slurm-multi      # slurmctld state, and one slurmd spool per node
LOGS=/var/log/slurm-multi
NODE_PREFIX=slurm-h               # node i: network namespace, hostname and Slurm node name slurm-h<i>
BRIDGE=brslurm
VETH_PREFIX=vslurm                # root end of node i's link: vslurm<i>
NET=10.79.0                       # node i has 10.79.0.<i>; the bridge (slurmctld, Dask scheduler) .254
CTLD_ADDR=10.79.0.254
CTLD_PORT=6917                    # the single-node Slurm has 6817 and 6818
SLURMD_PORT=6918
LOCK=/run/slurm-multi.lock          # serializes slurm-multi-up.sh and -down.sh
SHM_SIZE=1g                       # each node's private /dev/shm
