#!/bin/sh
# Slurm Epilog for a worker that runs crunch-run (install it as slurm.conf's Epilog, or call it
# from yours). slurmd runs it as root on the node after every job, with SLURM_JOB_ID set.
# crunch-dispatch-slurm names each job after its container UUID, and crunch-run labels its
# docker container org.arvados.container_uuid=<UUID>.
# 1. Remove any such container the job left running: its crunch-run was killed before it
#    could, and Slurm's kill never reaches a docker container (it is dockerd's child).
# 2. Remove the job's empty cgroup directories that docker created under the job's cgroup
#    when crunch-run ran with -cgroup-parent-subsystem: neither Slurm nor docker removes them.
# 3. Unmount the job's arv-mount (FUSE) mount point, <spool>/crunch-run-<UUID>-<pid>/keep:
#    Slurm's kill of the job kills arv-mount too, and leaves its mount behind, dead.
# Always exits 0: a failing Epilog drains the node.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
case "${SLURM_JOB_ID:-}" in
    "" | *[!0-9]*) exit 0 ;;
esac
# The FUSE mount points of crunch-run's runs of container $1 (octal escapes of
# /proc/mounts, such as \040 for a space, undone).
fuse_mounts() {
    awk -v run="/crunch-run-$1-" '$3 ~ /^fuse/ && index($2, run) && $2 ~ /\/keep$/ { print $2 }' /proc/mounts |
        sed 's/\\040/ /g'
}
# Slurm 22.05 does not pass SLURM_JOB_NAME to the Epilog; the job is still listed
# (COMPLETING) while the Epilog runs, and remembered for MinJobAge after.
name=${SLURM_JOB_NAME:-$(squeue --noheader --states=all --jobs="$SLURM_JOB_ID" --format=%j 2>/dev/null)}
case "$name" in
    ?????-dz642-???????????????)
        ids=$(docker ps --all --quiet --filter "label=org.arvados.container_uuid=$name" 2>/dev/null)
        # shellcheck disable=SC2086 # one id per word
        [ -z "$ids" ] || docker rm --force $ids >/dev/null 2>&1
        fuse_mounts "$name" | while read -r mnt; do
            fusermount -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
        done
        ;;
esac
for dir in $(find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -name "job_$SLURM_JOB_ID" 2>/dev/null); do
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
done
exit 0
