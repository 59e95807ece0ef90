#!/usr/bin/env python3
"""make bench: crunch-run against bare `docker run`, as ratios measured in one run.

(a) wall-time overhead of crunch-run for `echo hello` (image already loaded, local store)
    against `docker run --rm --network none --log-driver none IMAGE echo hello`;
(b) throughput of forwarding N MB of stdout lines into the log collection against
    `docker run --log-driver none IMAGE ... > /dev/null`, with two plain consumers of the
    same output for scale (`| md5sum` and `| cat > file`), and crunch-run fed the same bytes
    by the fake docker of binstubs/ (a bare `cat`), to show its own forwarding speed;
(c) crunch-run's own peak RSS (VmHWM) during those floods, for 50 MB and 500 MB;
(d), (e) staging a 200 MB input collection, and uploading it again as output;
(f) capturing 10,000 output files of 1 KiB, against arv-put of the same directory, both
    into the fake API + Keep of the tests (tests/bench_capture.rs): time and Keep PUTs.

BENCH_ONLY=capture runs section (f) alone (no Docker engine needed).
Figures are printed, never asserted: the machines are shared and noisy.
"""
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(TOP, "target", "release")
UUID = "zzzzz-dz642-0000000000bench"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "11"))
FLOOD_ROUNDS = int(os.environ.get("BENCH_FLOOD_ROUNDS", "3"))
LINE = "crunch-run bench line of text that is a bit longer than the usual log line ok"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def make_image():
    image = sh(os.path.join(TOP, "tests", "scripts", "make-test-image.sh"), "crunch-run-bench:latest", "crunch-run bench")
    return image


def store_image(store, image):
    tmp = tempfile.mkdtemp()
    tar = os.path.join(tmp, image + ".tar")
    sh("docker", "save", "-o", tar, image)
    pdh = sh(os.path.join(BIN, "arv-local"), "put", store, "bench image", tar)
    shutil.rmtree(tmp)
    return pdh


def write_record(store, pdh, command, mounts=None, output_path="/tmp"):
    os.makedirs(os.path.join(store, "containers"), exist_ok=True)
    rec = {"uuid": UUID, "state": "Locked", "command": command, "container_image": pdh,
           "cwd": ".", "environment": {}, "mounts": mounts or {}, "output_path": output_path,
           "priority": 1, "runtime_constraints": {}}
    with open(os.path.join(store, "containers", UUID + ".json"), "w") as f:
        json.dump(rec, f)


def run_crunch(store, spool, env=None):
    """Run crunch-run once; return (seconds, peak RSS bytes, exit status). The RSS is
    sampled on a thread, so the wall time is taken the moment the process exits."""
    start = time.monotonic()
    p = subprocess.Popen([os.path.join(BIN, "crunch-run"), "--local-store", store, "--spool-dir", spool, UUID],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            try:
                with open("/proc/%d/status" % p.pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    rc = p.wait()
    elapsed = time.monotonic() - start
    done.set()
    sampler.join()
    return elapsed, peak[0], rc


def check_complete(store, rc, what):
    """A run that did not reach Complete measured nothing: stop and say why."""
    with open(os.path.join(store, "containers", UUID + ".json")) as f:
        rec = json.load(f)
    if rc != 0 or rec.get("state") != "Complete":
        sys.exit("crunch-run did not complete %s (exit %d, state %s, runtime_status %s)"
                 % (what, rc, rec.get("state"), rec.get("runtime_status")))


def run_bare(image, command, consumer=None):
    """Time a bare docker run, its stdout to /dev/null or piped into a shell `consumer`."""
    argv = ["docker", "run", "--rm", "--network", "none", "--log-driver", "none", image] + command
    start = time.monotonic()
    if consumer is None:
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    else:
        script = "set -o pipefail; %s | %s" % (" ".join(shlex.quote(a) for a in argv), consumer)
        subprocess.run(["bash", "-c", script], stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - start


def run_crunch_fed_by_cat(store, spool, image, path, work):
    """crunch-run with the fake docker of binstubs/, whose container only cats `path`: how
    fast crunch-run itself forwards, when the producer costs next to nothing."""
    state = tempfile.mkdtemp(dir=work)
    env = dict(os.environ, PATH=os.path.join(TOP, "binstubs") + ":" + os.environ["PATH"],
               FAKE_DOCKER_STATE=state, FAKE_DOCKER_IMAGES=image,
               FAKE_DOCKER_RUN_SH="cat " + shlex.quote(path))
    t, _, rc = run_crunch(store, spool, env)
    shutil.rmtree(state)
    return t, rc


def flood_command(mb):
    return ["sh", "-c", "yes '%s' | head -c %d" % (LINE, mb * 1000 * 1000)]


def main():
    load = os.getloadavg()
    print("machine: %d cores, load average %.2f %.2f %.2f" % (os.cpu_count(), *load))
    if os.environ.get("BENCH_ONLY") == "capture":
        capture_bench()
        return
    image = make_image()
    work = tempfile.mkdtemp(prefix="crunch-run-bench-")
    store = os.path.join(work, "store")
    spool = os.path.join(work, "spool")
    os.makedirs(spool)
    pdh = store_image(store, image)

    # (a) overhead for echo hello, alternating to share the machine's noise.
    write_record(store, pdh, ["echo", "hello"])
    crunch, bare = [], []
    for _ in range(ROUNDS):
        write_record(store, pdh, ["echo", "hello"])
        t, _, rc = run_crunch(store, spool)
        check_complete(store, rc, "echo hello")
        crunch.append(t)
        bare.append(run_bare(image, ["echo", "hello"]))
    c, b = statistics.median(crunch), statistics.median(bare)
    print("(a) echo hello, median of %d: crunch-run %.3f s, bare docker run %.3f s, ratio %.2fx (target <= 1.2x)"
          % (ROUNDS, c, b, c / b))

    # (b) + (c) floods, alternating as in (a). For scale, two plain consumers of the same
    # docker run are timed too: one that only hashes the bytes and one that only writes them
    # to a file. crunch-run must do both (and more), so their ratios bound what it can reach
    # on this machine. Last, crunch-run fed the same bytes by the fake docker (a bare cat):
    # its own forwarding speed, with nearly all of the machine to itself.
    for mb in (50, 500):
        command = flood_command(mb)
        crunch, bare, hashed, filed, fed, peak = [], [], [], [], [], 0
        flood_file = os.path.join(work, "flood.out")
        for _ in range(FLOOD_ROUNDS):
            write_record(store, pdh, command)
            t, p, rc = run_crunch(store, spool)
            check_complete(store, rc, "the %d MB flood" % mb)
            crunch.append(t)
            peak = max(peak, p)
            bare.append(run_bare(image, command))
            hashed.append(run_bare(image, command, "md5sum >/dev/null"))
            filed.append(run_bare(image, command, "cat >" + shlex.quote(flood_file)))
            write_record(store, pdh, command)
            t, rc = run_crunch_fed_by_cat(store, spool, image, flood_file, work)
            check_complete(store, rc, "the %d MB flood fed by cat" % mb)
            fed.append(t)
            os.unlink(flood_file)
        t, tb = statistics.median(crunch), statistics.median(bare)
        print("(b) %d MB of stdout lines, median of %d: crunch-run %.2f s (%.0f MB/s), bare docker run > /dev/null %.2f s (%.0f MB/s), throughput ratio %.2f (target >= 0.8)"
              % (mb, FLOOD_ROUNDS, t, mb / t, tb, mb / tb, tb / t))
        print("    for scale: bare docker run | md5sum ratio %.2f; bare docker run | cat > file ratio %.2f"
              % (tb / statistics.median(hashed), tb / statistics.median(filed)))
        tf = statistics.median(fed)
        print("    crunch-run fed the same bytes by a cat instead of docker (binstubs/docker): %.2f s (%.0f MB/s), ratio %.2f"
              % (tf, mb / tf, tb / tf))
        print("(c) %d MB flood: crunch-run peak RSS %.1f MiB (target <= 32 MiB)" % (mb, peak / 2**20))
    mounts_bench(store, spool, pdh, work)
    shutil.rmtree(work, ignore_errors=True)
    capture_bench()


def timed_cp(src, dst):
    start = time.monotonic()
    subprocess.run(["cp", src, dst], check=True)
    with open(dst, "rb") as f:
        os.fsync(f.fileno())
    t = time.monotonic() - start
    os.unlink(dst)
    return t


def mounts_bench(store, spool, image_pdh, work):
    """(d) staging a 200 MB input collection, (e) staging it and uploading it again as
    output, against cp of the same bytes on the host; crunch-run's peak RSS meanwhile."""
    size = 200 * 1000 * 1000
    big = os.path.join(work, "big")
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])
    input_pdh = sh(os.path.join(BIN, "arv-local"), "put", store, "bench input", big)
    cp = statistics.median(timed_cp(big, big + ".copy") for _ in range(3))

    def run(command, mounts, output_path):
        write_record(store, image_pdh, command, mounts, output_path)
        t, peak, rc = run_crunch(store, spool)
        check_complete(store, rc, "the mounts bench")
        return t, peak

    base, _ = run(["true"], {"/out": {"kind": "tmp"}}, "/out")
    staged, peak_stage = run(["true"], {"/in": {"kind": "collection", "portable_data_hash": input_pdh},
                                        "/out": {"kind": "tmp"}}, "/out")
    # A writable copy of the input as the output, touched so that it must be uploaded.
    both, peak_both = run(["touch", "/out/big"], {"/out": {"kind": "collection", "portable_data_hash": input_pdh,
                                                           "writable": True}}, "/out")
    print("(d) staging a 200 MB input collection: %.2f s over a trivial run (%.2f s), cp %.2f s, ratio %.2fx; peak RSS %.1f MiB (target < 64 MiB)"
          % (staged - base, base, cp, (staged - base) / cp, peak_stage / 2**20))
    print("(e) staging it and uploading it again as output: %.2f s over a trivial run, 2 x cp %.2f s, ratio %.2fx; peak RSS %.1f MiB (target < 64 MiB)"
          % (both - base, 2 * cp, (both - base) / (2 * cp), peak_both / 2**20))


def capture_bench():
    """(f) crunch-run capturing 10,000 files of 1 KiB against arv-put (the Python SDK in
    .venv) of the same directory, both into the fake API + Keep: tests/bench_capture.rs,
    built in release mode, does the work and prints the figures."""
    argv = ["cargo", "test", "--release", "--quiet", "--test", "bench_capture", "--",
            "--ignored", "--nocapture", "--test-threads=1"]
    run = subprocess.run(argv, cwd=TOP, capture_output=True, text=True)
    figures = run.stdout[run.stdout.find("(f)"):].splitlines()
    if run.returncode != 0 or not figures:
        sys.exit("the capture bench failed (%s):\n%s%s" % (" ".join(argv), run.stdout, run.stderr[-3000:]))
    for line in figures:
        if line.startswith(("(f)", "    ")):
            print(line)


if __name__ == "__main__":
    main()
