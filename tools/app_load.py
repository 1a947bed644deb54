"""Load test of the demo app: python tools/app_load.py [--concurrent 50] [--requests 200] [--base B --lora L].

Starts `python app.py` (by default the shipped embedded model) on a free local port and drives /generate with
gradio_client: a burst of concurrent requests (each must finish with a valid result or be turned away with a
queue-full error), a long run of sequential requests (server RSS after request 20 and at the end; mp4 files
in the app's temp folders), and bad inputs (each must be a clear error, and the next good request must work).
Prints a summary table; the exit code is 1 if any target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a woman with long red hair and green eyes, no glasses, talking against a teal background",
    "a man with short black hair and brown eyes, with glasses, smiling against a grey background",
    "a young woman with curly blond hair, blue eyes, nodding against a white background",
]
RSS_AT = 20  # the first RSS figure is for the sequential requests up to this one
RSS_GROWTH = 0.10  # target: RSS at the end within 10% of RSS_AT
RSS_WINDOW = 10  # each RSS figure is the least of this many readings, one after each request
LONG_PROMPT = "word " * 300  # over the text encoder's 256 tokens
# (what is wrong, /generate arguments that differ from a good request, text the error must contain)
BAD_INPUTS = [
    ("empty prompt", {"prompt": ""}, "prompt is empty"),
    ("whitespace prompt", {"prompt": "  \n\t "}, "prompt is empty"),
    ("missing prompt", {"prompt": None}, "prompt is empty"),
    ("over-long prompt", {"prompt": LONG_PROMPT}, "at most 256"),
    ("100k-character prompt", {"prompt": "x" * 100_000}, "at most 2,000 are accepted"),
    ("20 MB prompt", {"prompt": "x" * 20_000_000}, "at most 2,000 are accepted"),
    ("NUL prompt", {"prompt": "\x00\x00\x00"}, "control character U+0000"),
    ("zero-width prompt", {"prompt": "\u200b\u200c\u200d"}, "prompt is empty"),
    ("number as prompt", {"prompt": 123}, "prompt must be text, got int"),
    ("list as prompt", {"prompt": ["a"]}, "prompt must be text, got list"),
    ("seed -1", {"seed": -1}, "seed=-1 must be an integer in [0, 2**32)"),
    ("seed 2**32", {"seed": 2**32}, "seed=4294967296 must be an integer in [0, 2**32)"),
    ("missing seed", {"seed": None}, "seed=None must be an integer"),
    ("seed 1.5", {"seed": 1.5}, "seed=1.5 must be an integer"),
    ("seed -0.4", {"seed": -0.4}, "seed=-0.4 must be an integer"),
    ("3.6 steps", {"few_steps": 3.6}, "few_steps=3.6 is not supported"),
    ("run_baseline 'false'", {"run_baseline": "false"}, "run_baseline='false' must be true or false"),
    ("3 steps", {"few_steps": 3}, "few_steps=3 is not supported"),
    ("0 steps", {"few_steps": 0}, "few_steps=0 is not supported"),
    ("missing steps", {"few_steps": None}, "few_steps=None is not supported"),
]


@dataclasses.dataclass
class Summary:
    """What one load test measured; ``failures`` lists the targets it missed."""

    concurrent: int = 0
    held: int = 0  # concurrent requests that finished with a valid result
    rejected: int = 0  # concurrent requests turned away with a queue-full error
    failed: int = 0  # any other outcome, in the burst or the sequential run
    requests: int = 0
    sequential_ok: int = 0
    rss_mb: list[float] = dataclasses.field(default_factory=list)  # server RSS after each sequential request
    videos_max: int = 0  # mp4 files in the app's own folder (VideoStore), most seen at once
    videos_limit: int = 0
    gradio_cache_max: int = 0  # mp4 copies in Gradio's cache (aged out by delete_cache, not by count)
    bad_tried: int = 0
    bad_handled: int = 0
    alive: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def rss_first_mb(self) -> float:
        """RSS after request RSS_AT: the least of the RSS_WINDOW readings up to it (peaks are not retained memory)."""
        return min(self.rss_mb[RSS_AT - RSS_WINDOW : RSS_AT], default=0.0)

    @property
    def rss_last_mb(self) -> float:
        """RSS after the last request: the least of the last RSS_WINDOW readings."""
        return min(self.rss_mb[-RSS_WINDOW:], default=0.0)

    @property
    def rss_ratio(self) -> float:
        return self.rss_last_mb / self.rss_first_mb if self.rss_first_mb else float("nan")

    @property
    def failures(self) -> list[str]:
        checks = [
            (self.held >= 1, "no concurrent request finished"),
            (self.held + self.rejected == self.concurrent, "concurrent requests neither held nor cleanly rejected"),
            (self.failed == 0, f"{self.failed} requests failed"),
            (self.sequential_ok == self.requests, f"{self.requests - self.sequential_ok} sequential requests failed"),
            (self.rss_ratio <= 1 + RSS_GROWTH, f"RSS grew by {self.rss_ratio - 1:.1%} (target <= {RSS_GROWTH:.0%})"),
            (self.videos_max <= self.videos_limit, f"{self.videos_max} mp4 files kept (limit {self.videos_limit})"),
            (self.bad_handled == self.bad_tried, f"{self.bad_tried - self.bad_handled} bad inputs not handled"),
            (self.alive, "the server is not alive at the end"),
        ]
        return [why for ok, why in checks if not ok]

    def table(self) -> str:
        rows = [
            ("concurrent requests", self.concurrent, ""),
            ("  held (valid result)", self.held, ">= 1"),
            ("  rejected (queue full)", self.rejected, f"held + rejected = {self.concurrent}"),
            ("failed (any phase)", self.failed, "0"),
            ("sequential requests ok", f"{self.sequential_ok}/{self.requests}", "all"),
            (f"server RSS @ {RSS_AT}", f"{self.rss_first_mb:.1f} MB", f"(least of the {RSS_WINDOW} readings up to it)"),
            (f"server RSS @ {self.requests}", f"{self.rss_last_mb:.1f} MB", f"(least of the last {RSS_WINDOW})"),
            ("  ratio", f"{self.rss_ratio:.3f}", f"<= {1 + RSS_GROWTH:.2f}"),
            ("app mp4 files, max", self.videos_max, f"<= {self.videos_limit}"),
            ("gradio cache mp4s, max", self.gradio_cache_max, "(info: aged out after 1 h)"),
            ("bad inputs handled", f"{self.bad_handled}/{self.bad_tried}", "all"),
            ("server alive at the end", "yes" if self.alive else "NO", "yes"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {str(value):>12}  {target}" for name, value, target in rows]
        lines.append(f"result: {'PASS' if not self.failures else 'FAIL: ' + '; '.join(self.failures)}")
        return "\n".join(lines)


# ---- the server ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Server:
    """A running ``app.py`` and where it keeps its files."""

    proc: subprocess.Popen
    url: str
    tmp: Path  # TMPDIR of the app: its videos are in w2svd-app-*/videos
    gradio_tmp: Path  # GRADIO_TEMP_DIR: Gradio's cached copies of outputs

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            return urllib.request.urlopen(self.url, timeout=10).status == 200
        except OSError:
            return False

    def rss_mb(self) -> float:
        return rss_bytes(self.proc.pid) / 2**20

    def app_videos(self) -> int:
        return len(list(self.tmp.glob("w2svd-app-*/videos/*.mp4")))

    def cached_videos(self) -> int:
        return len(list(self.gradio_tmp.rglob("*.mp4")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (psutil if installed, else /proc/PID/status)."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status") from None
    return psutil.Process(pid).memory_info().rss


def start_server(app_args: list[str], work: Path, port: int | None = None, timeout: float = 300.0) -> Server:
    """``python app.py APP_ARGS`` on ``port`` (default: a free one), its temp folders under ``work``."""
    port = port or free_port()
    tmp, gradio_tmp = work / "tmp", work / "gradio"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(gradio_tmp),
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
    }
    log = work / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", *app_args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(proc, f"http://127.0.0.1:{port}", tmp, gradio_tmp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if server.alive():
            return server
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


# ---- the requests -------------------------------------------------------------------------------
def good_request(i: int, steps: int, run_baseline: bool = False) -> dict:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "few_steps": steps, "run_baseline": run_baseline}


def check_result(result, request: dict) -> str | None:
    """None if a /generate result is valid for ``request``, else what is wrong with it."""
    few, base, stats = result
    for name, path in [("few-step video", few), ("baseline video", base)]:
        if path is None:
            continue
        head = Path(path).read_bytes()[:12] if Path(path).is_file() else b""
        if head[4:8] != b"ftyp":
            return f"{name} {path!r} is not an mp4 file"
    if few is None or (base is None) == request["run_baseline"]:
        return f"videos missing: few={few!r} baseline={base!r} for run_baseline={request['run_baseline']}"
    if stats.get("seed") != request["seed"] or stats.get("few_step", {}).get("nfe") != request["few_steps"]:
        return f"stats do not match the request {request}: {stats}"
    return None


def generate(client, request: dict) -> tuple[str, str]:
    """('ok' | 'rejected' | 'failed', detail) for one /generate call."""
    from gradio_client.utils import QueueError

    try:
        result = client.predict(**request, api_name="/generate")
    except QueueError as e:
        return ("rejected", str(e)) if "queue is full" in str(e).lower() else ("failed", f"QueueError: {e}")
    except Exception as e:  # anything else is a failure to report, never a crash of the load test
        return "failed", f"{type(e).__name__}: {e}"
    problem = check_result(result, request)
    return ("failed", problem) if problem else ("ok", "")


def default_steps(client) -> int:
    """The step count /generate uses by default (one the loaded model supports)."""
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    return int(next(p["parameter_default"] for p in params if p["parameter_name"] == "few_steps"))


def burst(client, n: int, steps: int, summary: Summary) -> None:
    """``n`` requests released at once from ``n`` threads."""
    start = threading.Barrier(n)

    def one(i: int) -> tuple[str, str]:
        start.wait()
        return generate(client, good_request(i, steps))

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(one, range(n)))
    summary.concurrent = n
    for outcome, detail in outcomes:
        summary.held += outcome == "ok"
        summary.rejected += outcome == "rejected"
        if outcome == "failed":
            summary.failed += 1
            summary.errors.append(f"burst: {detail}")


def sequential(client, server: Server, n: int, steps: int, summary: Summary, baseline_every: int = 10) -> None:
    """``n`` requests one after another (every ``baseline_every``-th with the baseline), watching RSS and files."""
    summary.requests = n
    for i in range(n):
        outcome, detail = generate(client, good_request(1000 + i, steps, run_baseline=i % baseline_every == 0))
        if outcome == "ok":
            summary.sequential_ok += 1
        else:
            summary.failed += 1
            summary.errors.append(f"sequential request {i + 1}: {outcome}: {detail}")
        summary.rss_mb.append(server.rss_mb())
        summary.videos_max = max(summary.videos_max, server.app_videos())
        summary.gradio_cache_max = max(summary.gradio_cache_max, server.cached_videos())


def bad_inputs(client, steps: int, summary: Summary) -> None:
    """Each bad input must be an error containing its expected text, and the next good request must work."""
    from gradio_client.exceptions import AppError

    for i, (what, change, expected) in enumerate(BAD_INPUTS):
        summary.bad_tried += 1
        try:
            client.predict(**{**good_request(i, steps), **change}, api_name="/generate")
            problem = "was accepted"
        except AppError as e:
            problem = None if expected in str(e) else f"error {str(e)!r} does not say {expected!r}"
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
        outcome, detail = generate(client, good_request(2000 + i, steps))
        if outcome != "ok":
            problem = f"{problem or 'handled'}, but the next good request {outcome}: {detail}"
        if problem:
            summary.errors.append(f"bad input ({what}): {problem}")
        else:
            summary.bad_handled += 1


def run(server: Server, concurrent: int, requests: int, videos_limit: int, downloads: Path) -> Summary:
    """All three phases against a running server."""
    from gradio_client import Client

    summary = Summary(videos_limit=videos_limit)
    client = Client(server.url, max_workers=max(concurrent, 1), verbose=False, download_files=str(downloads))
    steps = default_steps(client)
    t0 = time.perf_counter()
    burst(client, concurrent, steps, summary)
    t1 = time.perf_counter()
    sequential(client, server, requests, steps, summary)
    t2 = time.perf_counter()
    bad_inputs(client, steps, summary)
    t3 = time.perf_counter()
    summary.alive = server.alive()
    client.close()
    print(f"phases: burst {t1 - t0:.1f} s, sequential {t2 - t1:.1f} s, bad inputs {t3 - t2:.1f} s", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrent", type=int, default=50, help="requests released at once (default 50)")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests (default 200)")
    ap.add_argument("--port", type=int, default=None, help="port for the app (default: a free one)")
    ap.add_argument("--base", default=None, help="app.py --base (default: the app's default, the embedded base)")
    ap.add_argument("--lora", default=None, help="app.py --lora (default: the app's default)")
    ap.add_argument("--device", default=None, help="app.py --device (default: the app's default)")
    ap.add_argument("--max-videos", type=int, default=64, help="app.py --max-videos, the mp4 files target (64)")
    args = ap.parse_args(argv)
    if args.concurrent < 1 or args.requests < RSS_AT:
        ap.error(f"need --concurrent >= 1 and --requests >= {RSS_AT}")
    app_args = ["--max-videos", str(args.max_videos)]
    for flag in ("base", "lora", "device"):
        if getattr(args, flag) is not None:
            app_args += [f"--{flag}", getattr(args, flag)]
    with tempfile.TemporaryDirectory(prefix="w2svd-load-") as work:
        work = Path(work)
        t = time.perf_counter()
        server = start_server(app_args, work, args.port)
        print(f"app.py {' '.join(app_args)} up at {server.url} in {time.perf_counter() - t:.1f} s", flush=True)
        try:
            summary = run(server, args.concurrent, args.requests, args.max_videos, work / "downloads")
        finally:
            stop_server(server)
    trace = ", ".join(f"{i + 1}: {mb:.0f}" for i, mb in enumerate(summary.rss_mb) if (i + 1) % RSS_AT == 0)
    print(f"server RSS (MB) after request: {trace}")
    for error in summary.errors[:20]:
        print(f"  {error}")
    print(summary.table())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
