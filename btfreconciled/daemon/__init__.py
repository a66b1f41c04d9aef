"""btfreconciled, the daemon: module load events -> reconciled BTF in the cache."""
