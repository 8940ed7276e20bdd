"""Run the benchmark scenarios and print one table.

Starts the fast upstream (``bench.upstream``), the service under real gunicorn (gevent worker) with 1 worker and
again with 2, and the load generator (``bench.loadgen``) in its own process; the ``direct`` rows read the
upstream without the service, in the same run. CPU is read from /proc for all worker processes (user + system),
RSS per open stream is the workers' peak RSS over their idle RSS, divided by the streams open. The ``node`` rows are
the reference relay of ``bench/node_relay`` (one Node process), when ``npm ci --prefix bench/node_relay`` was run.
With ``--repeat N`` every row runs N times, the relays taking turns, and each figure is the median of its N runs.

    .venv/bin/python -m bench.run                 # everything once (about 10 minutes)
    .venv/bin/python -m bench.run --repeat 3      # the README's table: medians of 3 (about 30 minutes)
    .venv/bin/python -m bench.run --scenarios S1,S3 --workers 1
    .venv/bin/python -m bench.run --scenarios S5,S1w --workers 1   # short replies; the one-write extra row
    .venv/bin/python -m bench.run --scenarios S1,S1ws --workers 1 --node off   # SSE against WebSocket
    .venv/bin/python -m bench.run --scenarios S6 --workers 2 --node off         # 10,000 streams on one host

The default scenarios are S1-S5; S6 (10,000 streams at once: more open files than one process may have here, so
``--workers 2``), S1w (each reply in one upstream write) and S1ws (S1 over the WebSocket endpoint) run only when
named. The ``direct`` and ``node`` rows are skipped for S1ws: they have no WebSocket.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Scenario:
    name: str
    streams: int
    concurrency: int
    tokens: int
    delay: float
    description: str
    one_write: bool = False  # the upstream sends each reply in one write (an extra row, never the headline)
    target: str = "service"  # what the load generator reads: "service" (SSE) or "ws" (the WebSocket endpoint)


SCENARIOS = {
    "S1": Scenario("S1", 100, 1, 200, 0.0, "1 stream at a time, 200 tokens, no delay"),
    "S2": Scenario("S2", 1000, 1000, 100, 0.02, "1,000 concurrent x 100 tokens at 20 ms"),
    "S3": Scenario("S3", 1000, 50, 300, 0.0, "50 concurrent x 300 tokens, no delay (20 rounds)"),
    "S4": Scenario("S4", 5000, 5000, 50, 0.1, "5,000 concurrent x 50 tokens at 100 ms"),
    "S5": Scenario("S5", 3000, 20, 5, 0.0, "short replies: 20 concurrent x 5 tokens, no delay (3,000 requests)"),
    "S6": Scenario(
        "S6", 10000, 10000, 20, 0.5, "10,000 concurrent x 20 tokens at 500 ms (one host: run with --workers 2)"
    ),
    "S1w": Scenario("S1w", 100, 1, 200, 0.0, "S1 with each reply in one upstream write (no provider does this)", True),
    "S1ws": Scenario("S1ws", 100, 1, 200, 0.0, "S1 over the WebSocket: 100 turns on one socket", target="ws"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    return [int(item) for item in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_bytes(pids: list[int]) -> int:
    return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE for pid in pids)


class PeakRss:
    """Samples the workers' RSS every 20 ms while a scenario runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = rss_bytes(pids)
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes(self.pids))
            time.sleep(0.02)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def wait_http(port: int, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing healthy on port {port}")


def start_upstream() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.upstream", str(port)], cwd=ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()
    return process, port


def start_service(
    upstream_port: int,
    workers: int,
    folder: str,
    redis_url: str | None = None,
    overrides: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """The service under gunicorn with ``workers`` gevent workers, every limit raised; ``overrides`` (another
    upstream, say) go over the environment built here."""
    port = free_port()
    shared = {"REDIS_URL": redis_url} if redis_url else {}  # limits, slots, budgets, the mirror and leases
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_API_KEY": "bench",
        "CHAT_MODEL": "bench-model",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "GUNICORN_BACKLOG": "8192",
        "DATABASE_URL": f"sqlite:///{folder}/bench.sqlite3",
        "RATE_LIMIT": "1000000/minute",
        "TOKEN_BUDGET": "1000000000/hour",
        "MAX_STREAMS_PER_USER": "100000",
        "LOG_LEVEL": "warning",
        **shared,
        **(overrides or {}),
    }
    log = open(Path(folder) / f"gunicorn-{workers}.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    wait_http(port, "/healthz")
    while len(children(process.pid)) < workers:
        time.sleep(0.1)
    return process, port


NODE_RELAY = ROOT / "bench" / "node_relay"


def node_relay_ready() -> bool:
    """The Node reference relay runs when node is installed and ``npm ci --prefix bench/node_relay`` was run."""
    return shutil.which("node") is not None and (NODE_RELAY / "node_modules" / "openai").is_dir()


def start_node_relay(upstream_port: int, folder: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_API_KEY": "bench",
        "CHAT_MODEL": "bench-model",
    }
    log = open(Path(folder) / "node-relay.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(["node", str(NODE_RELAY / "relay.mjs"), str(port)], env=env, stdout=log, stderr=log)
    wait_http(port, "/healthz")
    return process, port


def load(target: str, port: int, scenario: Scenario) -> dict[str, object]:
    command = [
        sys.executable, "-m", "bench.loadgen", "--target", target, "--url", f"http://127.0.0.1:{port}",
        "--streams", str(scenario.streams), "--concurrency", str(scenario.concurrency),
        "--tokens", str(scenario.tokens), "--delay", str(scenario.delay),
    ] + (["--one-write"] if scenario.one_write else [])  # fmt: skip
    output = subprocess.run(command, cwd=ROOT, capture_output=True, check=True, timeout=600).stdout
    result: dict[str, object] = json.loads(output)
    return result


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


def children_cpu_seconds() -> float:
    """CPU of the finished children (the load generator runs to its end inside ``load``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(target: str, port: int, scenario: Scenario, workers: list[int], upstream: int) -> dict[str, float]:
    cpu_before = cpu_seconds(workers) if workers else 0.0
    harness_before = cpu_seconds([upstream]) + children_cpu_seconds()
    rss_idle = rss_bytes(workers) if workers else 0
    sampler = PeakRss(workers) if workers else None
    result = load(target, port, scenario)
    peak = sampler.stop() if sampler else 0
    cpu = cpu_seconds(workers) - cpu_before if workers else float("nan")
    harness = cpu_seconds([upstream]) + children_cpu_seconds() - harness_before
    tokens = float(result["tokens"])  # type: ignore[arg-type]
    ttft: list[float] = result["ttft"]  # type: ignore[assignment]
    total: list[float] = result["total"]  # type: ignore[assignment]
    open_streams = min(scenario.concurrency, scenario.streams)
    return {
        "success": 100.0 * float(result["ok"]) / float(result["streams"]),  # type: ignore[arg-type]
        "ttft_p50": percentile(ttft, 0.5) * 1000,
        "ttft_p99": percentile(ttft, 0.99) * 1000,
        "full_p99": percentile(total, 0.99),
        "cpu_us_per_token": cpu / tokens * 1e6 if tokens and workers else float("nan"),
        # meaningful with many streams open at once (S2, S4); with 1 or 50 it is mostly allocator warm-up
        "rss_kb_per_stream": (peak - rss_idle) / 1024 / open_streams if workers else float("nan"),
        "tokens_per_s": tokens / float(result["wall"]),  # type: ignore[arg-type]
        "requests_per_s": float(result["streams"]) / float(result["wall"]),  # type: ignore[arg-type]
        "cpu_ms_per_request": cpu / float(result["streams"]) * 1e3 if workers else float("nan"),  # type: ignore[arg-type]
        # what the upstream and the load generator burn: CPU the relay cannot have on this machine
        "harness_us_per_token": harness / tokens * 1e6 if tokens else float("nan"),
    }


def measure_relay(
    relay: subprocess.Popen[bytes], port: int, pids: list[int], scenario: Scenario, upstream_pid: int
) -> dict[str, float]:
    """One scenario on a relay just started (so RSS per stream starts from a new process), after a short warm-up;
    the relay is stopped afterwards. ``pids`` are the processes whose CPU and RSS count."""
    try:
        load(scenario.target, port, Scenario("warm", 20, 5, 20, 0.0, "warm-up"))
        return measure(scenario.target, port, scenario, pids, upstream_pid)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (with one run, that run)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


ROW = (
    "| {:<3} | {:<8} | {:>8.1f} | {:>9.1f} | {:>9.1f} | {:>9.2f} | {:>9.1f} | {:>9.1f} | {:>10,.0f} | {:>8,.0f} "
    "| {:>9.2f} | {:>9.1f} |"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="S1,S2,S3,S4,S5")
    parser.add_argument("--workers", default="1,2", help="gunicorn worker counts to run, comma-separated")
    parser.add_argument("--node", choices=("auto", "off"), default="auto", help="the Node reference relay row")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row, each on a fresh process; medians shown")
    parser.add_argument("--redis", metavar="URL", help="also run each worker count with REDIS_URL (rows 'Nw+redis')")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    chosen = [SCENARIOS[name] for name in args.scenarios.split(",")]
    worker_counts = [int(item) for item in args.workers.split(",")]
    upstream, upstream_port = start_upstream()
    rows: list[tuple[str, str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for scenario in chosen:
                runs: dict[str, list[dict[str, float]]] = {}
                for _ in range(args.repeat):  # the relays take turns, so a slow spell of the machine hits them all
                    if scenario.target == "service":  # the upstream and the Node relay speak no WebSocket
                        runs.setdefault("direct", []).append(
                            measure("direct", upstream_port, scenario, [], upstream.pid)
                        )
                    for count in worker_counts:
                        for redis_url in [None, args.redis] if args.redis else [None]:
                            service, port = start_service(upstream_port, count, folder, redis_url)
                            stats = measure_relay(service, port, children(service.pid), scenario, upstream.pid)
                            name = f"{count}w+redis" if redis_url else f"{count} worker" + ("s" if count > 1 else "")
                            runs.setdefault(name, []).append(stats)
                    if args.node == "auto" and node_relay_ready() and scenario.target == "service":
                        relay, port = start_node_relay(upstream_port, folder)
                        stats = measure_relay(relay, port, [relay.pid], scenario, upstream.pid)
                        runs.setdefault("node", []).append(stats)
                rows.extend((scenario.name, relay_name, median_of(found)) for relay_name, found in runs.items())
                print(f"{scenario.name} done", file=sys.stderr, flush=True)
        print_table(rows, chosen)
    finally:
        upstream.terminate()
        upstream.wait()


def print_table(rows: list[tuple[str, str, dict[str, float]]], chosen: list[Scenario]) -> None:
    print()
    for scenario in chosen:
        print(f"{scenario.name}: {scenario.description}")
    print(
        "| sc. | relay    | success% | TTFT p50 ms | TTFT p99 ms | full p99 s | CPU us/tok | RSS KB/strm | tokens/s "
        "| req/s | CPU ms/req | harness us/tok |"
    )
    print("| --- | -------- |" + " -------: |" * 9 + " ---------: |")
    for name, relay, stats in rows:
        print(
            ROW.format(
                name,
                relay,
                stats["success"],
                stats["ttft_p50"],
                stats["ttft_p99"],
                stats["full_p99"],
                stats["cpu_us_per_token"],
                stats["rss_kb_per_stream"],
                stats["tokens_per_s"],
                stats["requests_per_s"],
                stats["cpu_ms_per_request"],
                stats["harness_us_per_token"],
            )
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
