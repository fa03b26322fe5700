"""Runs the benchmarks of BENCHMARKS.md: every table, or the ones named, each printing Floe's
figures beside its peer's (DuckDB, a bare hash set, the same tenant alone, ...) and the ratios,
under a header naming the machine.

    python bench/run.py                    # every table, at the sizes of BENCHMARKS.md
    python bench/run.py queries ingest     # two tables
    python bench/run.py --quick            # every table at small sizes (a smoke run, minutes)
    python bench/run.py --list             # the tables and their commands

Uses FLOE_BIN (default: the release binary of the cargo target directory, built first when
missing). The `kafka` table needs a broker: FLOE_TEST_KAFKA_BROKERS and FLOE_KAFKA_PROPERTIES_*
as `infra/services.sh up` prints them; without one it is reported as not run, never as passed.
A table that fails is reported with its exit status, and the command then exits non-zero."""

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve()

# name: (section of BENCHMARKS.md, arguments at its sizes, arguments of --quick, what it needs)
TABLES = {
    "ingest": ("Ingest against peers, same machine, same run", ["ingest_vs_peers.py", "--events-per-tenant", "400000"],
               ["ingest_vs_peers.py", "--events-per-tenant", "20000"], None),
    "dedup": ("De-duplication window: bytes and time per id", ["dedup_memory", "--ids", "20000000"],
              ["dedup_memory", "--ids", "200000"], None),
    "restart": ("Restart after kill -9: events taken before the window is read",
                ["restart.py", "--ids", "5000000"], ["restart.py", "--ids", "20000", "--runs", "1"], None),
    "fairness": ("Fairness: one tenant floods, another keeps its latency",
                 ["fairness.py", "--seconds", "30", "--flood", "10"],
                 ["fairness.py", "--seconds", "4", "--rounds", "1", "--a-events", "20000"], None),
    "observability": ("Observability: what metrics and traces cost ingest",
                      ["observability.py", "--events-per-tenant", "300000", "--rounds", "3"],
                      ["observability.py", "--events-per-tenant", "10000", "--rounds", "1"], None),
    "queries": ("Queries: Floe over the Trino protocol versus DuckDB on the same files",
                ["query_vs_duckdb.py", "--events", "10000000"],
                ["query_vs_duckdb.py", "--events", "100000", "--runs", "2"], None),
    "queries-compacted": ("Queries over the compacted table",
                          ["query_vs_duckdb.py", "--events", "10000000", "--compact"],
                          ["query_vs_duckdb.py", "--events", "100000", "--runs", "2", "--compact"], None),
    "projections": ("Projections: lag behind the events under steady ingest",
                    ["projections.py", "--preload", "10000000", "--rate", "20000", "--seconds", "120"],
                    ["projections.py", "--preload", "50000", "--rate", "2000", "--seconds", "6", "--runs", "3"], None),
    "schemas": ("Event schemas: validation at ingest", ["schemas.py", "--events-per-tenant", "300000", "--rounds", "3"],
                ["schemas.py", "--events-per-tenant", "10000", "--rounds", "1"], None),
    "promoted": ("Event schemas: queries over promoted columns", ["promoted.py", "--events", "5000000"],
                 ["promoted.py", "--events", "100000", "--runs", "2"], None),
    "compaction": ("Compaction of a table built from 5,000 commits", ["compaction.py", "--commits", "5000", "--one-stream-too"],
                   ["compaction.py", "--commits", "100", "--runs", "1", "--one-stream-too"], None),
    "kafka": ("Kafka ingest: Kafka-to-visible latency and the highest sustained rate",
              ["kafka.py", "--rate", "20000", "--seconds", "60", "--tenants", "4", "--backlog", "1000000"],
              ["kafka.py", "--rate", "2000", "--seconds", "10", "--tenants", "2", "--backlog", "20000"],
              "FLOE_TEST_KAFKA_BROKERS"),
}


def machine():
    """One line on the machine: CPU model, cores, memory, kernel."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def revision():
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def build(what):
    """Builds `what` (cargo arguments) in the release profile, failing loudly."""
    print(f"== building: cargo build --release {' '.join(what)}", flush=True)
    subprocess.run(["cargo", "build", "--release", "--locked", *what], cwd=ROOT, check=True)


def command(name, args):
    """The command of a table, and its environment."""
    env = dict(os.environ)
    if args[0] == "dedup_memory":
        binary = TARGET / "release" / "examples" / "dedup_memory"
        if not binary.exists():
            build(["-p", "floe-ingest", "--example", "dedup_memory"])
        return [str(binary), *args[1:]], env
    floe = Path(env.get("FLOE_BIN") or TARGET / "release" / "floe")
    if not floe.exists():
        if "FLOE_BIN" in env:
            sys.exit(f"FLOE_BIN={floe} does not exist")
        build(["--bin", "floe"])
    env["FLOE_BIN"] = str(floe.resolve())
    if name == "kafka" and "FLOE_KAFKA_LOAD" not in env:
        # The steady-rate producer, looked for beside floe (bench/kafka.py).
        load = floe.resolve().parent / "examples" / "kafka_load"
        if not load.exists():
            build(["-p", "floe-ingest", "--example", "kafka_load"])
    # The scripts import their neighbours (floe_server, query_vs_duckdb): run them from bench/.
    return [sys.executable, str(ROOT / "bench" / args[0]), *args[1:]], env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="*", metavar="TABLE", help=f"any of: {', '.join(TABLES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes: checks that every table runs, in minutes")
    ap.add_argument("--list", action="store_true", help="print the tables and their commands, run nothing")
    opts = ap.parse_args()
    unknown = [t for t in opts.tables if t not in TABLES]
    if unknown:
        ap.error(f"no table {', '.join(unknown)}; the tables are {', '.join(TABLES)}")
    names = opts.tables or list(TABLES)
    if opts.list:
        for name in names:
            section, full, quick, needs = TABLES[name]
            print(f"{name:14} {section}\n{'':14} {shlex.join(full)}   (--quick: {shlex.join(quick[1:])})"
                  + (f"   needs {needs}" if needs else ""))
        return
    print(f"Machine: {machine()}")
    print(f"Floe: {revision()}; sizes: {'--quick (not comparable with BENCHMARKS.md)' if opts.quick else 'BENCHMARKS.md'}")
    results = []
    for name in names:
        section, full, quick, needs = TABLES[name]
        args = quick if opts.quick else full
        print(f"\n== {name}: {section}", flush=True)
        if needs and not os.environ.get(needs):
            print(f"not run: {needs} is not set (eval \"$(infra/services.sh up)\" first)", flush=True)
            results.append((name, "not run", 0.0))
            continue
        cmd, env = command(name, args)
        print(f"$ {shlex.join(cmd)}", flush=True)
        started = time.monotonic()
        code = subprocess.run(cmd, cwd=ROOT / "bench", env=env).returncode
        results.append((name, "ok" if code == 0 else f"failed (exit {code})", time.monotonic() - started))
    print(f"\n== summary ({machine()})")
    for name, outcome, secs in results:
        print(f"{name:14} {outcome:20} {secs:8.0f} s")
    if any(outcome.startswith("failed") for _, outcome, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
