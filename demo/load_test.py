"""Many concurrent demo sessions through ``gradio_client``: ``python -m demo.load_test``.

Starts ``python -m demo`` (random weights unless ``--checkpoint``) on a free 127.0.0.1 port, or
drives ``--url``; runs ``--sessions`` simulated users in threads, each with its own made image
(a distinct size and colours); stops the server; prints the report (``--json`` also writes it)
and exits 1 on any leak or unexpected error. Every user does, in order:

upload -> ``--clicks`` point clicks -> export -> "everything" -> export, then, after all users
are done, one probe (``/clear``) that tells whether its session is still alive.

With ``--idle K`` the first K users upload before the others start and wait until they are done
(and at least ``--idle-seconds``): users who walked away, evicted first once more than
``--max-sessions`` tabs are open (or after ``--session-ttl``). An evicted user is told
:data:`demo.app.SESSION_EXPIRED` and stops; that answer is counted, not an error.

Leaks are checked on every answer against the user's own image: an overlay must have the image's
size and every pixel must be the image's pixel, its blend with the mask colour, the outline or a
prompt marker; an export must have the image's size, the user's own prompts, and redraw exactly
into the overlay the user was shown. (With random weights the masks themselves mean nothing, so
whether a mask covers the user's object is not checked.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from effvit_sam.errors import run_command
from effvit_sam.io import write_json

from .app import SESSION_EXPIRED
from .load_checks import check_everything, check_overlay, check_point_export, made_image
from .load_server import free_port, peak_rss_mb, rss_mb, start_server, stop_server

STATUS_MS = re.compile(r"\*\*(encoder|decoder)\*\* ([\d.]+) ms")


class Expired(Exception):
    """The server answered :data:`SESSION_EXPIRED`."""


@dataclass
class UserResult:
    """What one simulated user saw. ``served``: answers without error; ``alive``: the probe's
    verdict (None if the user never got to it)."""

    index: int
    size_wh: tuple[int, int]
    served: int = 0
    expired: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    click_ms: list[float] = field(default_factory=list)
    decoder_ms: list[float] = field(default_factory=list)
    completed: bool = False
    alive: bool | None = None
    last_request: float = 0.0


class User:
    """One browser tab, driven through its own ``gradio_client.Client`` (its own session)."""

    def __init__(self, url: str, index: int, *, clicks: int, seed: int, deadline: float,
                 workdir: Path) -> None:
        from gradio_client import Client

        self.image = made_image(index)
        h, w = self.image.shape[:2]
        self.result = UserResult(index=index, size_wh=(w, h))
        self.clicks, self.deadline = clicks, deadline
        self.rng = np.random.default_rng(seed + index)
        folder = workdir / f"user{index:03d}"
        folder.mkdir(parents=True)
        self.path = folder / "image.png"
        Image.fromarray(self.image).save(self.path)  # PNG: lossless, pixels compare exactly
        self.client = Client(url, verbose=False, download_files=str(folder))

    def call(self, *args, api_name: str):
        """One request with the time left before the deadline; raises :class:`Expired`."""
        from gradio_client.exceptions import AppError

        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the run's --timeout was reached")
        try:
            out = self.client.submit(*args, api_name=api_name).result(timeout=remaining)
        except AppError as err:
            message = str(err)
            if SESSION_EXPIRED in message:
                raise Expired(message) from None
            raise
        finally:
            self.result.last_request = time.monotonic()
        self.result.served += 1
        return out

    def leak(self, what: str, problems: list[str]) -> None:
        self.result.leaks += [f"user {self.result.index} {what}: {p}" for p in problems]

    def upload(self) -> None:
        from gradio_client import handle_file

        overlay, _, status, *_ = self.call(handle_file(str(self.path)), api_name="/upload")
        self.leak("upload", check_overlay(overlay, self.image, exact=True))
        if "**encoder**" not in status:
            self.leak("upload", [f"status does not name the encoder time: {status!r}"])

    def work(self) -> None:
        """Clicks, export, "everything", export (after :meth:`upload`)."""
        h, w = self.image.shape[:2]
        points = []
        overlay = None
        for k in range(self.clicks):
            background = k % 3 == 2  # every third click: a background point near a corner
            x = int(self.rng.integers(0, w // 8)) if background else int(
                self.rng.integers(w // 4 + 2, 3 * w // 4 - 2))
            y = int(self.rng.integers(0, h // 8)) if background else int(
                self.rng.integers(h // 4 + 2, 3 * h // 4 - 2))
            points.append((x, y, 0 if background else 1))
            start = time.perf_counter()
            overlay, choice, status, *_ = self.call(x, y, "point", background, True,
                                                    api_name="/click")
            self.result.click_ms.append((time.perf_counter() - start) * 1000)
            self.result.decoder_ms += [float(ms) for kind, ms in STATUS_MS.findall(status)
                                       if kind == "decoder"]
            self.leak(f"click {k}", check_overlay(overlay, self.image, exact=False))
            if len(choice.get("choices") or []) != 3:
                self.leak(f"click {k}", [f"expected 3 alternative masks, got {choice!r}"])
        if overlay is not None:
            png, js = self.call(api_name="/export")
            self.leak("export", check_point_export(png, js, self.image, points, overlay))
        overlay, *_ = self.call("everything", api_name="/set_mode")
        png, js = self.call(api_name="/export")
        self.leak("everything", check_everything(overlay, png, js, self.image))

    def probe(self) -> None:
        """``/clear``: an alive session answers with its own image, unprompted."""
        try:
            overlay, *_ = self.call(api_name="/clear")
        except Expired as err:
            self.result.expired.append(str(err))
            self.result.alive = False
            return
        self.result.alive = True
        self.leak("probe", check_overlay(overlay, self.image, exact=True))

    def guarded(self, step) -> bool:
        """Run ``step``; record an expiry or error. Returns whether to go on."""
        try:
            step()
            return True
        except Expired as err:
            self.result.expired.append(str(err))
        except Exception as err:  # noqa: BLE001 - every failure is reported, none ends the run
            self.result.errors.append(f"user {self.result.index}: {type(err).__name__}: {err}")
        return False


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def run_users(url: str, *, sessions: int, clicks: int, idle: int, idle_seconds: float,
              timeout: float, seed: int = 0) -> list[UserResult]:
    """Run ``sessions`` users against ``url`` (see the module docstring); their results."""
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="effvit-sam-load-") as tmp:
        users = [User(url, i, clicks=clicks, seed=seed, deadline=deadline, workdir=Path(tmp))
                 for i in range(sessions)]
        idle_users, active = users[:idle], users[idle:]
        go_on = {id(u): u.guarded(u.upload) for u in idle_users}  # they are the oldest tabs
        idle_since = time.monotonic()

        def active_user(user: User) -> None:
            if user.guarded(user.upload) and user.guarded(user.work):
                user.result.completed = True

        threads = [threading.Thread(target=active_user, args=(u,)) for u in active]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(max(0.0, idle_seconds - (time.monotonic() - idle_since)))

        def idle_user(user: User) -> None:
            if go_on[id(user)] and user.guarded(user.work):
                user.result.completed = True

        threads = [threading.Thread(target=idle_user, args=(u,)) for u in idle_users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Probe the most recently active first: probing a dropped tab makes Gradio open a new
        # (empty) state for it, which pushes out the least recently used tab (already probed).
        for user in sorted(users, key=lambda u: -u.result.last_request):
            user.guarded(user.probe)
        return [u.result for u in users]


def summarize(results: list[UserResult]) -> dict:
    """The figures of a run: counts, click latency percentiles, alive vs evicted sessions."""
    clicks = [ms for r in results for ms in r.click_ms]
    decoder = [ms for r in results for ms in r.decoder_ms]
    return {
        "sessions": len(results),
        "requests_served": sum(r.served for r in results),
        "errors": [e for r in results for e in r.errors],
        "leaks": [x for r in results for x in r.leaks],
        "expired_answers": sum(len(r.expired) for r in results),
        "expired_message": next((m for r in results for m in r.expired), None),
        "completed": sum(r.completed for r in results),
        "alive": sum(r.alive is True for r in results),
        "evicted": sum(r.alive is False for r in results),
        "clicks": len(clicks),
        "click_ms_p50": percentile(clicks, 50),
        "click_ms_p95": percentile(clicks, 95),
        "decoder_ms_p50": percentile(decoder, 50),
        "users": [asdict(r) for r in results],
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.load_test",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sessions", type=int, default=20, help="simulated users (threads)")
    p.add_argument("--clicks", type=int, default=10, help="point clicks per user")
    p.add_argument("--idle", type=int, default=0, help="users who upload first, then wait")
    p.add_argument("--idle-seconds", type=float, default=0.0,
                   help="the idle users wait at least this long")
    p.add_argument("--url", default=None, help="drive this running demo instead of starting one")
    p.add_argument("--model", default="efficientvit-sam-tiny")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--points-per-side", type=int, default=8, help="the 'everything' grid")
    p.add_argument("--max-sessions", type=int, default=32)
    p.add_argument("--session-ttl", type=float, default=1800.0)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds for the whole run; requests still waiting then are errors")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.clicks < 0 or not 0 <= args.idle <= args.sessions:
        p.error("--sessions must be positive, --clicks >= 0 and --idle in 0..--sessions")
    if args.timeout <= 0 or args.idle_seconds < 0:
        p.error("--timeout must be positive and --idle-seconds >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    server = None
    report: dict = {"model": args.model, "weights": str(args.checkpoint or "random weights"),
                    "max_sessions": args.max_sessions, "session_ttl": args.session_ttl,
                    "points_per_side": args.points_per_side, "load_avg_start": os.getloadavg()}
    url = args.url
    if url is None:
        server, url = start_server(
            model=args.model, checkpoint=args.checkpoint, device=args.device,
            port=free_port(), points_per_side=args.points_per_side,
            max_sessions=args.max_sessions, session_ttl=args.session_ttl)
        report["rss_mb_idle"] = rss_mb(server.pid)
    start = time.monotonic()
    try:
        results = run_users(url, sessions=args.sessions, clicks=args.clicks, idle=args.idle,
                            idle_seconds=args.idle_seconds, timeout=args.timeout)
    finally:
        if server is not None:
            report["peak_rss_mb"] = peak_rss_mb(server.pid)
            report["server_exit"] = stop_server(server)
    report["wall_s"] = round(time.monotonic() - start, 1)
    report["load_avg_end"] = os.getloadavg()
    report.update(summarize(results))
    print_report(report)
    if args.json is not None:
        write_json(args.json, report)
    return 0 if not report["errors"] and not report["leaks"] else 1


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def print_report(r: dict) -> None:
    print(f"{r['sessions']} sessions, {r['clicks']} clicks, {r['model']} ({r['weights']}), "
          f"--max-sessions {r['max_sessions']}, --points-per-side {r['points_per_side']}, "
          f"{r['wall_s']} s, load average {r['load_avg_start'][0]:.1f} -> "
          f"{r['load_avg_end'][0]:.1f}")
    print(f"requests served {r['requests_served']}, errors {len(r['errors'])}, "
          f"leaks {len(r['leaks'])}, 'session expired' answers {r['expired_answers']}")
    print(f"sessions alive {r['alive']}, evicted {r['evicted']}, completed {r['completed']}")
    print(f"click round trip p50 {_ms(r['click_ms_p50'])}, p95 {_ms(r['click_ms_p95'])} "
          f"(server decoder p50 {_ms(r['decoder_ms_p50'])})")
    if "peak_rss_mb" in r:
        print(f"server RSS idle {r['rss_mb_idle']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB")
    for line in (r["errors"] + r["leaks"])[:20]:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(run_command("python -m demo.load_test", main, sys.argv[1:]))
