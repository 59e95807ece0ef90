#!/bin/sh
# make bench: print crunch-run's figures against bare docker run (see bench/bench.py).
set -eu
exec python3 "$(dirname "$0")/bench.py" "$@"
