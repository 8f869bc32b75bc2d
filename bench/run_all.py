"""Run every benchmark script in bench/ and write bench/RESULTS.md (machine, date, tables).

Each script prints markdown table rows; this collects them. ``python bench/run_all.py [name...]``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SETTLE_S = 10
TIMEOUT_S = 600
# rss.py runs every ingestor's path and the order router to 10M events, one after the other
LONGER_S = {"rss": 3600}
ORDER = [
    "contracts",
    "books",
    "sandbox_finx",
    "sandbox_ticksupply",
    "sandbox_digitex",
    "sandbox_sitagri",
    "ingest_finx",
    "ingest_ticksupply",
    "ingest_digitex",
    "ingest_sitagri",
    "peer_cryptofeed",
    "history_writer",
    "history_lake",
    "order_router",
    "export_orchestrator",
    "replay",
    "postgres_store",
    "rss",
    "e2e_latency",
]


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main(names: list[str]) -> int:
    scripts = [HERE / f"{n}.py" for n in (names or ORDER) if (HERE / f"{n}.py").exists()]
    sections = []
    failed = 0
    for script in scripts:
        # let the previous benchmark's aftermath settle (dirty pages written back, PostgreSQL's
        # autovacuum after a big COPY): it would otherwise land on this one's measurements
        os.sync()
        time.sleep(SETTLE_S)
        print(f"== {script.stem}", flush=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=LONGER_S.get(script.stem, TIMEOUT_S), check=False)
        rows = [line for line in proc.stdout.splitlines() if line.startswith("|")]
        print("\n".join(rows) or proc.stdout[-2000:], flush=True)
        if proc.returncode != 0:
            failed += 1
            print(proc.stderr[-3000:], file=sys.stderr)
        sections.append(
            f"### {script.stem} ({time.monotonic() - started:.0f} s{'' if proc.returncode == 0 else ', FAILED'})\n\n"
            + "\n".join(rows)
        )
    header = (
        "# Benchmark results\n\n"
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}.\n"
        "Each table row: the figure, the target from the issue, the reference measured in the same run, the ratio.\n\n"
    )
    if not names:
        (HERE / "RESULTS.md").write_text(header + "\n\n".join(sections) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
