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
    into the fake API + Keep of the tests (tests/bench_capture.rs): time and Keep PUTs;
(g) `echo hello` against the fake Arvados API + Keep over HTTPS (examples/fake_arvados.rs)
    answering every request after a latency (BENCH_API_LATENCY, default 0ms,10ms,30ms),
    with the requests on the run's critical path, read from the fake's request log;
(h) loading a 150 MB image into the engine: crunch-run streaming it from Keep (the fake,
    over HTTPS, and the local store) into `docker load`, against `docker load -i` of the
    same tar on local disk;
(j) inputs: a 1 GB input collection from the fake API + Keep, through arv-mount (FUSE)
    against staging: time from the record going Running (and from crunch-run's start:
    staging comes before Running) to the container's first instruction, and with an empty
    collection mounted through FUSE, for scale; reading it all in the
    container, against `cp` of the same bytes on the host, with the work staging cannot
    skip done by plain tools for scale (curl GETs of the same blocks, 4 at a time, | md5sum,
    and | tee file | md5sum); crunch-run's and arv-mount's peak RSS (BENCH_INPUT_MB,
    default 1000; BENCH_INPUT_ROUNDS, default 3).
(i) crunchstat: the CPU cost of one sample of a container's, crunch-run's own and the
    host's cgroups (bench/crunchstat_cost.rs), and `echo hello` with crunchstat and
    hoststat on (the default 10s interval) against off (-crunchstat-interval=0).

Sections can run alone: `bench.py api image`, or BENCH_SECTIONS=api,image (BENCH_ONLY is
the same), names: hello, floods, mounts, capture, api, image, crunchstat, inputs; capture needs no Docker
engine. Figures are printed, never asserted: the machines are shared and noisy.
"""
import calendar
import concurrent.futures
import json
import os
import resource
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
IMAGE_ROUNDS = int(os.environ.get("BENCH_IMAGE_ROUNDS", "3"))
IMAGE_MB = int(os.environ.get("BENCH_IMAGE_MB", "150"))
SECTIONS = ("hello", "floods", "mounts", "capture", "api", "image", "crunchstat", "inputs")
# Another build to measure (e.g. the one before a change), instead of target/release's.
CRUNCH_RUN = os.environ.get("BENCH_CRUNCH_RUN") or os.path.join(BIN, "crunch-run")
FLOOD_ROUNDS = int(os.environ.get("BENCH_FLOOD_ROUNDS", "3"))
CRUNCHSTAT_ROUNDS = int(os.environ.get("BENCH_CRUNCHSTAT_ROUNDS", "21"))
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


def run_crunch(store, spool, env=None, uuid=UUID, stderr=subprocess.DEVNULL, flags=()):
    """Run crunch-run once; return (seconds, peak RSS bytes, exit status). The RSS is
    sampled on a thread, so the wall time is taken the moment the process exits. With no
    `store`, it runs against the API that `env` names."""
    start = time.monotonic()
    where = ["--local-store", store] if store else []
    p = subprocess.Popen([CRUNCH_RUN] + where + ["--spool-dir", spool] + list(flags) + [uuid],
                         stdout=subprocess.DEVNULL, stderr=stderr, env=env)
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


def chosen_sections():
    """The sections to run: the arguments, else BENCH_SECTIONS or BENCH_ONLY
    (comma-separated), else all."""
    listed = os.environ.get("BENCH_SECTIONS") or os.environ.get("BENCH_ONLY") or ""
    names = sys.argv[1:] or [n for n in listed.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit("unknown bench section(s) %s; known: %s" % (", ".join(unknown), ", ".join(SECTIONS)))
    return names or list(SECTIONS)


def main():
    sections = chosen_sections()
    load = os.getloadavg()
    print("machine: %d cores, load average %.2f %.2f %.2f; sections: %s"
          % (os.cpu_count(), *load, " ".join(sections)))
    if sections == ["capture"]:
        capture_bench()
        return
    image = make_image()
    work = tempfile.mkdtemp(prefix="crunch-run-bench-")
    store = os.path.join(work, "store")
    spool = os.path.join(work, "spool")
    os.makedirs(spool)
    pdh = store_image(store, image)
    if "hello" in sections:
        hello_bench(store, spool, pdh, image)
    if "floods" in sections:
        floods_bench(store, spool, pdh, image, work)
    if "mounts" in sections:
        mounts_bench(store, spool, pdh, work)
    if "crunchstat" in sections:
        crunchstat_bench(store, spool, pdh, image)
    if "capture" in sections:
        capture_bench()
    if "api" in sections or "image" in sections or "inputs" in sections:
        fake = FakeArvados()
        try:
            if "api" in sections:
                api_bench(fake, image, spool, work)
            if "image" in sections:
                image_bench(fake, store, spool, work)
            if "inputs" in sections:
                inputs_bench(fake, image, spool, work)
        finally:
            fake.close()
    shutil.rmtree(work, ignore_errors=True)


def hello_bench(store, spool, pdh, image):
    """(a) overhead for echo hello, alternating to share the machine's noise."""
    crunch, bare = [], []
    for _ in range(ROUNDS):
        write_record(store, pdh, ["echo", "hello"])
        t, _, rc = run_crunch(store, spool)
        check_complete(store, rc, "echo hello")
        crunch.append(t)
        bare.append(run_bare(image, ["echo", "hello"]))
    c, b = statistics.median(crunch), statistics.median(bare)
    print("(a) echo hello, median of %d: crunch-run %.3f s, bare docker run %.3f s, ratio %.2fx (target <= 1.1x)"
          % (ROUNDS, c, b, c / b))


def floods_bench(store, spool, pdh, image, work):
    """(b) + (c) floods, alternating as in (a). For scale, two plain consumers of the same
    docker run are timed too: one that only hashes the bytes and one that only writes them
    to a file. crunch-run must do both (and more), so their ratios bound what it can reach
    on this machine. Last, crunch-run fed the same bytes by the fake docker (a bare cat):
    its own forwarding speed, with nearly all of the machine to itself."""
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


def crunchstat_cost(image):
    """The CPU time of one crunchstat sample (bench/crunchstat_cost.rs, a release build) of
    a running container's cgroup, crunch-run's own (the example's), and the host's roots."""
    cargo = os.environ.get("CARGO", "cargo")
    subprocess.run([cargo, "build", "--quiet", "--release", "--example", "crunchstat-cost"],
                   cwd=TOP, check=True)
    cost = os.path.join(BIN, "examples", "crunchstat-cost")
    name = "crunch-run-bench-crunchstat"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    sh("docker", "run", "-d", "--name", name, "--network", "none", image, "sleep", "120")
    try:
        pid = sh("docker", "inspect", "--format", "{{.State.Pid}}", name)
        for target, what in ((pid, "a container"), ("self", "crunch-run's own"), ("root", "the host's roots")):
            line = sh(cost, target)
            print("    %s: %s" % (what, line[line.find("(") :]))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def sampled(store):
    """Whether the last run's crunchstat.txt holds figures (the container's PID was found
    while it ran), rather than the notice that it ended first."""
    with open(os.path.join(store, "containers", UUID + ".json")) as f:
        log = json.load(f).get("log")
    text = subprocess.run([os.path.join(BIN, "arv-local"), "cat", store, log, "crunchstat.txt"],
                          capture_output=True, text=True).stdout
    return any(line.split(" ", 2)[1:2] == ["mem"] for line in text.splitlines())


def crunchstat_bench(store, spool, pdh, image):
    """(i) crunchstat's CPU cost per sample; then echo hello with crunchstat on and off,
    alternating which goes first in each round, medians of wall time and of the CPU time of
    crunch-run and its children (the docker clients: the PID lookup is one per ask)."""
    print("(i) crunchstat CPU cost per sample (a tick reads the cgroup every second, a report "
          "every interval also writes the lines):")
    crunchstat_cost(image)
    times = {True: [], False: []}
    cpu = {True: [], False: []}
    found = 0
    for i in range(CRUNCHSTAT_ROUNDS):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            write_record(store, pdh, ["echo", "hello"])
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t, _, rc = run_crunch(store, spool, flags=() if on else ("-crunchstat-interval=0",))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            check_complete(store, rc, "echo hello with crunchstat %s" % ("on" if on else "off"))
            times[on].append(t)
            cpu[on].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if on and sampled(store):
                found += 1
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print("    echo hello, median of %d alternating rounds: crunchstat on %.3f s, off %.3f s, ratio %.3fx (target <= 1.02x); "
          "CPU of crunch-run and its children %.1f ms on, %.1f ms off; the container's PID found in %d of %d runs"
          % (CRUNCHSTAT_ROUNDS, on, off, on / off, 1000 * statistics.median(cpu[True]),
             1000 * statistics.median(cpu[False]), found, CRUNCHSTAT_ROUNDS))


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


class FakeArvados:
    """The fake Arvados API + Keep of the tests, run as examples/fake_arvados (see there for
    its protocol: one JSON command a line on stdin, one JSON answer a line on stdout)."""

    def __init__(self):
        cargo = os.environ.get("CARGO", "cargo")
        subprocess.run([cargo, "build", "--quiet", "--release", "--example", "fake_arvados"],
                       cwd=TOP, check=True)
        self.proc = subprocess.Popen([os.path.join(BIN, "examples", "fake_arvados")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def call(self, op, **args):
        self.proc.stdin.write(json.dumps(dict(op=op, **args)) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            sys.exit("fake Arvados: %s: %s" % (op, answer["error"]))
        return answer

    def cpu(self):
        """CPU seconds the fake has used so far (user + system)."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def env(self):
        """crunch-run's environment for this API. Keep services are discovered, as on a
        compute node, unless BENCH_KEEP_SERVICES=1 lists them in ARVADOS_KEEP_SERVICES."""
        env = dict(os.environ, ARVADOS_API_HOST=self.info["api_host"],
                   ARVADOS_API_TOKEN=self.info["token"], SSL_CERT_FILE=self.info["ca_file"])
        env.pop("ARVADOS_API_HOST_INSECURE", None)
        env.pop("ARVADOS_KEEP_SERVICES", None)
        if os.environ.get("BENCH_KEEP_SERVICES") == "1":
            env["ARVADOS_KEEP_SERVICES"] = self.info["keep_services"]
        return env

    def add_container(self, uuid, pdh, command):
        self.call("add_container", record={
            "uuid": uuid, "state": "Locked", "command": command, "container_image": pdh,
            "cwd": ".", "environment": {}, "mounts": {}, "output_path": "/tmp", "priority": 1,
            "runtime_constraints": {}})

    def check_complete(self, uuid, rc, what):
        rec = self.call("container", uuid=uuid)
        if rc != 0 or rec.get("state") != "Complete":
            sys.exit("crunch-run did not complete %s against the fake API (exit %d, state %s, runtime_status %s)"
                     % (what, rc, rec.get("state"), rec.get("runtime_status")))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def latencies():
    """BENCH_API_LATENCY as milliseconds: comma-separated durations (30ms, 0.03s, 30)."""
    out = []
    for item in os.environ.get("BENCH_API_LATENCY", "0ms,10ms,30ms").split(","):
        item = item.strip()
        if item.endswith("ms"):
            out.append(float(item[:-2]))
        elif item.endswith("s"):
            out.append(float(item[:-1]) * 1000)
        elif item:
            out.append(float(item))
    return out


def short_request(r):
    """`GET containers/…/auth`: a request of the fake's log, named briefly."""
    path = r["path"].replace("/arvados/v1/", "")
    parts = [("…" if len(p) >= 27 else p) for p in path.split("/")]
    where = "" if r["server"] == "api" else r["server"] + " "
    return "%s %s%s" % (r["method"], where, "/".join(parts))


def api_bench(fake, image, spool, work):
    """(g) echo hello against the fake API over HTTPS, at each latency, alternating with
    bare docker run. The critical path is read from the fake's request log: the stretches
    of time in which at least one request was in flight (requests that overlap count once;
    a lower bound), and the longest chain of requests each started after the one before
    ended (an upper bound: it counts background requests nothing waited for)."""
    tar = os.path.join(work, "hello-image.tar")
    sh("docker", "save", "-o", tar, image)
    pdh = fake.call("add_collection", files=[[image + ".tar", tar]])["pdh"]
    os.unlink(tar)
    env = fake.env()
    keep = "listed in ARVADOS_KEEP_SERVICES" if "ARVADOS_KEEP_SERVICES" in env else "discovered"
    print("(g) echo hello against the fake API + Keep over HTTPS (Keep services %s), median of %d:" % (keep, ROUNDS))
    n = 0
    for ms in latencies():
        fake.call("latency", ms=ms)
        crunch, bare, paths, chains, conns, log = [], [], [], [], [], None
        for _ in range(ROUNDS):
            n += 1
            uuid = "zzzzz-dz642-%015d" % n
            fake.add_container(uuid, pdh, ["echo", "hello"])
            fake.call("timeline")
            t, _, rc = run_crunch(None, spool, env, uuid)
            fake.check_complete(uuid, rc, "echo hello")
            log = fake.call("timeline")
            crunch.append(t)
            paths.append(log["critical_path"])
            chains.append(log["longest_chain"])
            conns.append(sum(log["connections"].values()))
            bare.append(run_bare(image, ["echo", "hello"]))
        c, b = statistics.median(crunch), statistics.median(bare)
        target = "1.8x" if ms >= 30 else ("1.15x" if ms == 0 else None)
        print("    latency %g ms: crunch-run %.3f s, bare docker run %.3f s, ratio %.2fx%s; %d requests, critical path %s (longest chain %s), %s connections (TLS handshakes)"
              % (ms, c, b, c / b, " (target <= %s)" % target if target else "", len(log["requests"]),
                 spread(paths), spread(chains), spread(conns)))
    print("    critical path of the last run (at most 6 wanted), a stretch a line:")
    for stretch_no, stretch in enumerate(stretches_of(log), 1):
        print("      %2d. %s" % (stretch_no, "  |  ".join(stretch)))


def spread(values):
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else "%d-%d" % (lo, hi)


def stretches_of(log):
    """The requests of the log grouped into stretches, as the fake computed them."""
    requests = sorted(log["requests"], key=lambda r: r["start_ms"])
    out, end = [], None
    for r in requests:
        if out and r["start_ms"] < end:
            out[-1].append(short_request(r))
        else:
            out.append([short_request(r)])
        end = r["end_ms"] if end is None else max(end, r["end_ms"])
    return out


def make_big_image(work, mb):
    """A busybox image with `mb` MB of random bytes in its layer (they do not compress):
    returns (image id, path of its `docker save` tar)."""
    root = tempfile.mkdtemp(dir=work)
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "payload"), "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1000 * 1000))
    tag = "crunch-run-bench-big:latest"
    importer = subprocess.Popen(["docker", "import", "--change", "ENV PATH=/bin", "-", tag],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    subprocess.run(["tar", "-C", root, "-c", "."], stdout=importer.stdin, check=True)
    importer.stdin.close()
    if importer.wait() != 0:
        sys.exit("docker import of the big image failed")
    shutil.rmtree(root)
    image = sh("docker", "image", "inspect", "--format", "{{.Id}}", tag)
    tar = os.path.join(work, image + ".tar")
    sh("docker", "save", "-o", tar, image)
    return image, tar


def remove_image(image):
    subprocess.run(["docker", "rmi", "-f", image], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def log_time(line):
    """The time of a crunch-run log line `<uuid> <RFC 3339 with ns> text`, in seconds."""
    stamp = line.split(" ", 2)[1].rstrip("Z")
    secs, _, frac = stamp.partition(".")
    t = time.mktime(time.strptime(secs, "%Y-%m-%dT%H:%M:%S"))
    return t + float("0." + (frac or "0"))


def crunch_load_time(store, spool, env, uuid, work):
    """Run crunch-run once with its image not in the engine; return how long its load took:
    from its "Loading Docker image" line to the first line after `docker load` ended."""
    err_path = os.path.join(work, "crunch-run.stderr")
    with open(err_path, "w") as err:
        _, _, rc = run_crunch(store, spool, env, uuid, stderr=err)
    with open(err_path) as f:
        lines = f.read().splitlines()
    start = [log_time(l) for l in lines if "Loading Docker image from keep" in l]
    end = [log_time(l) for l in lines if " docker load: " in l]
    if rc != 0 or not start or not end:
        sys.exit("crunch-run did not load the image (exit %d):\n%s" % (rc, "\n".join(lines[-20:])))
    return end[0] - start[0], rc


def image_bench(fake, store, spool, work):
    """(h) a IMAGE_MB image from Keep into docker load, against docker load -i of the same
    tar on local disk, alternating; the image is removed before every load."""
    image, tar = make_big_image(work, IMAGE_MB)
    size = os.path.getsize(tar) / 1e6
    fake_pdh = fake.call("add_collection", files=[[image + ".tar", tar]])["pdh"]
    local_pdh = sh(os.path.join(BIN, "arv-local"), "put", store, "bench big image", tar)
    env = fake.env()
    plain, from_fake, from_local = [], [], []
    for n in range(IMAGE_ROUNDS):
        remove_image(image)
        start = time.monotonic()
        sh("docker", "load", "-q", "-i", tar)
        plain.append(time.monotonic() - start)
        remove_image(image)
        uuid = "zzzzz-dz642-im%013d" % n
        fake.add_container(uuid, fake_pdh, ["true"])
        t, rc = crunch_load_time(None, spool, env, uuid, work)
        fake.check_complete(uuid, rc, "the image load")
        from_fake.append(t)
        remove_image(image)
        write_record(store, local_pdh, ["true"])
        t, rc = crunch_load_time(store, spool, None, UUID, work)
        check_complete(store, rc, "the image load from the local store")
        from_local.append(t)
    remove_image(image)
    os.unlink(tar)
    p = statistics.median(plain)
    print("(h) loading a %.0f MB image, median of %d: docker load -i %.2f s (%.0f MB/s)" % (size, IMAGE_ROUNDS, p, size / p))
    for what, times in (("the fake Keep over HTTPS", from_fake), ("the local store", from_local)):
        t = statistics.median(times)
        print("    crunch-run streaming it from %s into docker load: %.2f s (%.0f MB/s), throughput ratio %.2f (target >= 0.95)"
              % (what, t, size / t, p / t))


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def rfc3339(stamp):
    """Seconds since the epoch of `2026-12-03T20:31:19.898357849Z`."""
    secs, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(secs, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def inputs_run(fake, spool, env, uuid, pdh, input_pdh, how, command, work):
    """One run with `input_pdh` at /in through `how` (fuse, stage); the container prints
    /proc/uptime (host-wide, not namespaced) before and after `command`. Returns (start:
    Running → first instruction, s; command's time in the container, s; staging's time,
    s; crunch-run's peak RSS; arv-mount's peak RSS; crunch-run's start → first instruction, s)."""
    script = "cat /proc/uptime; %s; cat /proc/uptime" % command
    fake.call("add_container", record={
        "uuid": uuid, "state": "Locked", "command": ["sh", "-c", script], "container_image": pdh,
        "cwd": ".", "environment": {}, "output_path": "/out", "priority": 1,
        "mounts": {"/out": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": input_pdh}},
        "runtime_constraints": {"ram": 512 << 20, "vcpus": 1}})
    offset = time.time() - uptime()
    err_path = os.path.join(work, "crunch-run.stderr")
    arv_peak, done = [0], threading.Event()

    def sample_arv_mount():
        while not done.wait(0.05):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        argv = f.read().split(b"\0")
                    if not any(a.endswith(b"arv-mount") for a in argv) or not any(spool.encode() in a for a in argv):
                        continue
                    with open("/proc/%s/status" % pid) as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                arv_peak[0] = max(arv_peak[0], int(line.split()[1]) * 1024)
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    pass

    sampler = threading.Thread(target=sample_arv_mount)
    sampler.start()
    launched = time.time()
    with open(err_path, "w") as err:
        _, peak, rc = run_crunch(None, spool, env, uuid, stderr=err, flags=["--keep-mount=" + how])
    done.set()
    sampler.join()
    fake.check_complete(uuid, rc, "the inputs bench (%s)" % how)
    rec = fake.call("container", uuid=uuid)
    stdout = fake.call("read_file", id=rec["log"], path="stdout.txt")["text"].splitlines()
    marks = [float(l.split(" ", 1)[1].split()[0]) + offset for l in stdout]
    start = marks[0] - rfc3339(rec["started_at"])
    with open(err_path) as f:
        lines = f.read().splitlines()
    chose = [log_time(l) for l in lines if "Collection mounts: " in l]
    copied = [log_time(l) for l in lines if "mount /in: copied" in l]
    staging = copied[0] - chose[0] if chose and copied else 0.0
    return start, marks[1] - marks[0], staging, peak, arv_peak[0], marks[0] - launched


def plain_fetch(fake, locators, work, keep_file):
    """The work staging cannot skip, done by plain tools: every block GET from the same
    fake Keep over HTTPS by curl (a process and a TLS handshake per block, spread over the
    services as crunch-run's are), 4 at a time as staging's fetches, each hashed once by
    md5sum, and with `keep_file` also written to a file (tee; not synced, as staging's
    copy is not). Seconds."""
    roots = fake.info["keep_services"].split()
    header = os.path.join(work, "auth-header")
    with open(header, "w") as f:
        f.write("Authorization: Bearer %s\n" % fake.info["token"])
    out = os.path.join(work, "plain-fetch")
    os.makedirs(out, exist_ok=True)

    def get(i):
        url = "%s/%s" % (roots[i % len(roots)], locators[i])
        sink = "tee %s | " % shlex.quote(os.path.join(out, str(i))) if keep_file else ""
        script = "set -o pipefail; curl -sf --cacert %s -H @%s %s | %smd5sum >/dev/null" % (
            shlex.quote(fake.info["ca_file"]), shlex.quote(header), shlex.quote(url), sink)
        subprocess.run(["bash", "-c", script], check=True)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(get, range(len(locators))))
    t = time.monotonic() - start
    shutil.rmtree(out)
    return t


def inputs_bench(fake, image, spool, work):
    """(j) a 1 GB input through FUSE and through staging (see the module's docstring)."""
    mb = int(os.environ.get("BENCH_INPUT_MB", "1000"))
    rounds = int(os.environ.get("BENCH_INPUT_ROUNDS", "3"))
    tar = os.path.join(work, "inputs-image.tar")
    sh("docker", "save", "-o", tar, image)
    pdh = fake.call("add_collection", files=[[image + ".tar", tar]])["pdh"]
    os.unlink(tar)
    big = os.path.join(work, "input.bin")
    with open(big, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1000 * 1000))
    input_pdh = fake.call("add_collection", files=[["input.bin", big]])["pdh"]
    empty = os.path.join(work, "empty")
    open(empty, "w").close()
    empty_pdh = fake.call("add_collection", files=[["empty", empty]])["pdh"]
    venv = os.path.join(TOP, ".venv", "bin")
    if not os.path.exists(os.path.join(venv, "arv-mount")):
        sys.exit("no arv-mount in %s: run `make pyenv`" % venv)
    env = dict(fake.env(), PATH=venv + ":" + os.environ["PATH"])
    cp = statistics.median(timed_cp(big, big + ".copy") for _ in range(rounds))
    locators = fake.call("blocks", id=input_pdh)["locators"]
    fig = {k: [] for k in ("empty", "fuse_start", "stage_start", "fuse_read", "stage_read",
                           "staging", "fuse_rss", "stage_rss", "arv_rss", "empty_all", "fuse_all", "stage_all",
                           "hashed", "hashed_filed", "stage_cpu", "fake_cpu")}
    for n in range(rounds):
        u = lambda k: "zzzzz-dz642-in%d%012d" % (k, n)
        s, _, _, _, _, a = inputs_run(fake, spool, env, u(1), pdh, empty_pdh, "fuse", "true", work)
        fig["empty"].append(s); fig["empty_all"].append(a)
        s, r, _, peak, arv, a = inputs_run(fake, spool, env, u(2), pdh, input_pdh, "fuse", "cat /in/input.bin >/dev/null", work)
        fig["fuse_start"].append(s); fig["fuse_read"].append(r); fig["fuse_rss"].append(peak); fig["arv_rss"].append(arv)
        fig["fuse_all"].append(a)
        before, fake_before = resource.getrusage(resource.RUSAGE_CHILDREN), fake.cpu()
        s, r, st, peak, _, a = inputs_run(fake, spool, env, u(3), pdh, input_pdh, "stage", "cat /in/input.bin >/dev/null", work)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        fig["stage_cpu"].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        fig["fake_cpu"].append(fake.cpu() - fake_before)
        fig["stage_start"].append(s); fig["stage_read"].append(r); fig["staging"].append(st); fig["stage_rss"].append(peak)
        fig["stage_all"].append(a)
        fig["hashed"].append(plain_fetch(fake, locators, work, False))
        fig["hashed_filed"].append(plain_fetch(fake, locators, work, True))
    m = {k: statistics.median(v) for k, v in fig.items()}
    size = mb / 1000.0
    stage_total = m["staging"] + m["stage_read"]
    print("(j) a %.1f GB input collection from the fake Keep, median of %d:" % (size, rounds))
    print("    Running -> first instruction: FUSE %.2f s, an empty collection through FUSE %.2f s (difference %+.2f s, target <= 0.2 s); staging %.2f s (staging alone %.2f s)"
          % (m["fuse_start"], m["empty"], m["fuse_start"] - m["empty"], m["stage_start"], m["staging"]))
    print("    (staging happens before the Running update, as in Go) crunch-run's start -> first instruction: FUSE %.2f s, empty collection %.2f s, staging %.2f s"
          % (m["fuse_all"], m["empty_all"], m["stage_all"]))
    print("    reading it all: through FUSE %.2f s (%.0f MB/s); staged: copy %.2f s + read %.2f s = %.2f s (%.0f MB/s); FUSE/staging speed %.2f (target >= 0.5)"
          % (m["fuse_read"], mb / m["fuse_read"], m["staging"], m["stage_read"], stage_total, mb / stage_total, stage_total / m["fuse_read"]))
    print("    staging's copy against cp of the same bytes on the host (%.2f s): %.2fx (target <= 1.5x)" % (cp, m["staging"] / cp))
    print("    CPU of the staged run: crunch-run and its children (the docker clients) %.2f s, the fake API + Keep %.2f s, on %d cores"
          % (m["stage_cpu"], m["fake_cpu"], os.cpu_count()))
    print("    (the work it cannot skip, by plain tools, 4 blocks at a time from the same fake Keep: curl | md5sum %.2f s, %.2fx cp; curl | tee file | md5sum %.2f s, %.2fx cp)"
          % (m["hashed"], m["hashed"] / cp, m["hashed_filed"], m["hashed_filed"] / cp))
    print("    peak RSS: crunch-run %.1f MiB with FUSE (arv-mount %.1f MiB), %.1f MiB staging"
          % (m["fuse_rss"] / 2**20, m["arv_rss"] / 2**20, m["stage_rss"] / 2**20))
    os.unlink(big)


if __name__ == "__main__":
    main()
