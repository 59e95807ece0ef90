#!/bin/sh
# The demo: run one real container end to end through a local store.
# Builds a tiny busybox image, stores it as a collection in ./demo/store, writes a Locked
# container record (a json mount, a tmp output directory), runs crunch-run on it, and prints
# the final record, its log files and its output collection.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$top/target/release
demo=$top/demo
store=$demo/store
uuid=zzzzz-dz642-000000000000001

rm -rf "$demo"
mkdir -p "$store/containers"

image=$("$top/tests/scripts/make-test-image.sh" crunch-run-demo:latest "crunch-run demo $(date +%s)")
docker save -o "$demo/$image.tar" "$image"
# Drop the image from the engine so that crunch-run has to load it from the store.
docker rmi crunch-run-demo:latest >/dev/null
pdh=$("$bin/arv-local" put "$store" "demo image" "$demo/$image.tar")
rm -f "$demo/$image.tar"

cat >"$store/containers/$uuid.json" <<JSON
{
  "uuid": "$uuid",
  "state": "Locked",
  "command": ["sh", "-c", "echo hello world; echo this goes to stderr >&2; pwd; echo \"FROBIZ=\$FROBIZ\"; cp /etc/greeting.json /out/; echo result > /out/result.txt"],
  "container_image": "$pdh",
  "cwd": ".",
  "environment": {"FROBIZ": "bilbo"},
  "mounts": {
    "/out": {"kind": "tmp"},
    "/etc/greeting.json": {"kind": "json", "content": {"hello": "world"}}
  },
  "output_path": "/out",
  "priority": 1,
  "runtime_constraints": {"ram": 268435456, "vcpus": 1}
}
JSON

echo "== crunch-run --local-store $store $uuid"
"$bin/crunch-run" --local-store "$store" "$uuid" || echo "(crunch-run exited $?)"
echo
echo "== final container record"
"$bin/arv-local" show "$store" "$uuid"
log=$("$bin/arv-local" show "$store" "$uuid" | sed -n 's/^ *"log": "\([^"]*\)".*/\1/p')
if [ -z "$log" ]; then
    echo "no log collection was saved" >&2
    exit 1
fi
echo
echo "== stdout.txt of log collection $log"
"$bin/arv-local" cat "$store" "$log" stdout.txt
echo
echo "== crunch-run.txt"
"$bin/arv-local" cat "$store" "$log" crunch-run.txt
output=$("$bin/arv-local" show "$store" "$uuid" | sed -n 's/^ *"output": "\([^"]*\)".*/\1/p')
echo
echo "== output collection $output: greeting.json, result.txt"
"$bin/arv-local" cat "$store" "$output" greeting.json
echo
"$bin/arv-local" cat "$store" "$output" result.txt
