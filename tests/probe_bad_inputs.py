"""Issue #14's probe: bad inputs tried against every entry point, each answer classified.

Run it from the repository root (about 15 minutes on 2 CPU cores; nothing is downloaded)::

    python tests/probe_bad_inputs.py --out table.md          # every case
    python tests/probe_bad_inputs.py --only segment --out -  # cases whose area/name has it

Not collected by pytest (no ``test_`` prefix); ``tests/test_bad_inputs_probe.py`` runs a few of
its cases through these functions. Every input is made in a temporary folder
(:mod:`tests.probe_files`), which is the working directory of the cases, so messages name files
as a user would. CLI cases (:mod:`tests.probe_cli_cases`) run as ``python -m ...`` subprocesses
of this checkout (``PYTHONPATH``), with an empty Hugging Face cache, ``HF_HUB_OFFLINE=1`` and no
visible CUDA device; API cases (:mod:`tests.probe_api_cases`) are snippets run in this process.

Classes:

* **clear**: a CLI exits with code 2 and one line ``PROG: error: MESSAGE``, no traceback; an API
  call raises a ``ValueError``/``TypeError``/``LookupError``/``OSError`` (the library's
  ``UserError`` and ``CheckpointError`` are ``ValueError``s). The message must name what the
  case expects: the offending argument or file and the problem. For bad data inside good data
  (an annotation with a too-short RLE, a corrupt sample in a shard) the designed answer is to
  skip and count it: exit 0 with the expected counts and names in the output.
* **poor**: a traceback, another exit code or exception type, or a message without the names.
* **wrong**: no error for a bad input (exit 0, no exception, or the skip not reported), or a
  command that keeps running on it past its timeout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = ("clear", "poor", "wrong")
API_ERRORS = (ValueError, TypeError, LookupError, OSError)
TRACEBACK = "Traceback (most recent call last)"
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Case:
    """One bad input. ``argv`` (a CLI case: the arguments after ``python``) or ``code`` (an API
    case: Python statements run with the names of :func:`tests.probe_api_cases.namespace`);
    ``expect``: substrings the answer must hold (case-insensitive); ``exits``: the exit codes of
    a clear answer (``(0,)`` for skip-and-count cases)."""

    area: str
    name: str
    argv: tuple[str, ...] = ()
    code: str = ""
    expect: tuple[str, ...] = ()
    exits: tuple[int, ...] = (2,)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def shown(self) -> str:
        """The command or call as a user would type it."""
        return "python " + shlex.join(self.argv) if self.argv else self.code


def cli(area: str, name: str, command: str, *expect: str, exits: tuple[int, ...] = (2,),
        timeout: float = DEFAULT_TIMEOUT) -> Case:
    """A CLI case from a shell-like command line (``-m effvit_sam segment ...``)."""
    return Case(area, name, argv=tuple(shlex.split(command)), expect=expect, exits=exits,
                timeout=timeout)


def api(area: str, name: str, code: str, *expect: str) -> Case:
    return Case(area, name, code=code, expect=expect)


@dataclass
class Answer:
    """What a case got: ``message`` (the error line, or a summary), ``code`` (exit code, or the
    exception's type name, or ``"returned"``), ``klass`` and why."""

    message: str
    code: str
    klass: str
    why: str = ""
    output: str = field(default="", repr=False)


def _names_missing(case: Case, text: str) -> list[str]:
    return [e for e in case.expect if e.lower() not in text.lower()]


def _error_line(output: str) -> tuple[str, int]:
    """The last ``PROG: error: ...`` line (else the last non-empty line) and how many there are."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    return (errors[-1] if errors else (lines[-1] if lines else "")), len(errors)


def classify_cli(case: Case, returncode: int | None, stdout: str, stderr: str) -> Answer:
    """The class of a CLI answer (``returncode`` ``None``: killed at the timeout)."""
    output = stdout + stderr
    line, n_errors = _error_line(stderr)
    if returncode is None:
        return Answer(f"still running after {case.timeout:.0f} s", "timeout", "wrong",
                      "ran on with a bad input", output)
    code = f"exit {returncode}"
    if TRACEBACK in output:
        return Answer(line, code, "poor", "traceback", output)
    if returncode == 0 and 0 in case.exits:  # a skip-and-count answer
        missing = _names_missing(case, output)
        if missing:
            return Answer(line or "(no error)", code, "wrong",
                          f"bad data not reported: no {missing}", output)
        summary = next(ln for ln in output.splitlines() if case.expect[-1].lower() in ln.lower())
        return Answer(summary.strip(), code, "clear", "skipped and counted", output)
    if returncode == 0:
        return Answer(line or "(no error)", code, "wrong", "accepted a bad input", output)
    if returncode not in case.exits:
        return Answer(line, code, "poor", f"exit code {returncode}", output)
    missing = _names_missing(case, line)
    if n_errors != 1 or missing:
        return Answer(line, code, "poor", f"message lacks {missing}" if missing else
                      f"{n_errors} error lines", output)
    return Answer(line, code, "clear", "", output)


def _env(workdir: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(workdir / "empty-cache"), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("EFFVIT_SAM_DEBUG", None)
    return env


def _forked(case: Case, workdir: Path) -> tuple[int | None, str, str]:
    """``python -m MODULE ARGS`` in a child forked from this process (which imported torch and
    the package once): the module run as ``__main__`` with its argv, cwd and environment; an
    uncaught exception prints its traceback and exits 1, as the interpreter does."""
    out, err = workdir / ".probe.stdout", workdir / ".probe.stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.setpgid(0, 0)  # its own group: a timeout kills it with any workers it started
            for fd, path in ((1, out), (2, err)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.chdir(workdir)
            os.environ.clear()
            os.environ.update(_env(workdir))
            if case.argv[0] != "-m":
                raise ValueError(f"a forked case runs '-m MODULE ...', got {case.argv[:2]}")
            sys.argv = [case.argv[1], *case.argv[2:]]
            try:
                runpy.run_module(case.argv[1], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
                if exit_.code is not None and not isinstance(exit_.code, int):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - what the interpreter does with it
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + case.timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            returncode = None
            break
        time.sleep(0.1)
    return returncode, out.read_text(errors="replace"), err.read_text(errors="replace")


def run_cli(case: Case, workdir: Path, *, fresh: bool = False) -> Answer:
    """Run a CLI case in a forked child (default) or, with ``fresh``, a new interpreter."""
    if not fresh:
        return classify_cli(case, *_forked(case, workdir))
    try:
        proc = subprocess.run([sys.executable, *case.argv], cwd=workdir, env=_env(workdir),
                              text=True, capture_output=True, timeout=case.timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        return classify_cli(case, None, out, "")
    return classify_cli(case, proc.returncode, proc.stdout, proc.stderr)


def preimport() -> None:
    """Import what the CLI cases use once, before any fork; one intra-op thread (a forked child
    must not inherit a started OpenMP pool)."""
    import torch

    torch.set_num_threads(1)
    for name in ("effvit_sam.build", "effvit_sam.predictor", "effvit_sam.automatic",
                 "effvit_sam.weights", "effvit_sam.tools.segment", "effvit_sam.tools.export",
                 "distill.cli", "distill.run", "distill.engine", "distill.phase1",
                 "distill.phase2", "eval.cli", "eval.runner", "demo.cli", "accelerate",
                 "webdataset", "segment_anything", "pycocotools.mask", "yaml", "safetensors"):
        importlib.import_module(name)


def classify_api(case: Case, error: BaseException | None) -> Answer:
    if error is None:
        return Answer("(returned without an error)", "returned", "wrong", "accepted a bad input")
    kind = type(error).__name__
    text = str(error).strip()
    line = f"{kind}: {text.splitlines()[0] if text else ''}"
    if not isinstance(error, API_ERRORS):
        return Answer(line, kind, "poor", f"untyped exception {kind}",
                      "".join(traceback.format_exception(error)))
    missing = _names_missing(case, line)
    if missing:
        return Answer(line, kind, "poor", f"message lacks {missing}")
    return Answer(line, kind, "clear")


def run_api(case: Case, namespace: dict, workdir: Path) -> Answer:
    """Run the snippet in ``workdir`` (its relative names), then go back."""
    scope, before = dict(namespace), os.getcwd()
    os.chdir(workdir)
    try:
        exec(case.code, scope)  # noqa: S102 - the probe's own snippets
    except Exception as err:  # noqa: BLE001 - every exception is an answer to classify
        return classify_api(case, err)
    finally:
        os.chdir(before)
    return classify_api(case, None)


def run_cases(cases: list[Case], workdir: Path, *, namespace: Callable[[Path], dict],
              progress: Callable[[Case, Answer], None] | None = None,
              fresh: bool = False) -> list[Answer]:
    """Every case's answer, in order (API cases share one namespace, built on first use)."""
    scope: dict | None = None
    answers = []
    for case in cases:
        if case.argv:
            answer = run_cli(case, workdir, fresh=fresh)
        else:
            if scope is None:
                scope = namespace(workdir)
            answer = run_api(case, scope, workdir)
        answers.append(answer)
        if progress is not None:
            progress(case, answer)
    return answers


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def counts_line(answers: list[Answer]) -> str:
    counts = Counter(a.klass for a in answers)
    return (f"{len(answers)} bad inputs tried: " +
            ", ".join(f"{counts[k]} {k}" for k in CLASSES))


def table(cases: list[Case], answers: list[Answer]) -> str:
    """The markdown table (case | command or call | answer | class) and the counts line."""
    rows = ["| area | case | command or call | answer (first line, exit code) | class |",
            "|---|---|---|---|---|"]
    for case, a in zip(cases, answers, strict=True):
        klass = a.klass if a.klass == "clear" else f"**{a.klass}** ({a.why})"
        rows.append(f"| {case.area} | {_cell(case.name)} | `{_cell(case.shown, 200)}` | "
                    f"{_cell(a.message)} ({a.code}) | {klass} |")
    by_area = Counter((c.area, a.klass) for c, a in zip(cases, answers, strict=True))
    areas = list(dict.fromkeys(c.area for c in cases))
    summary = ["| area | tried | clear | poor | wrong |", "|---|---|---|---|---|"]
    for area in areas:
        n = [by_area[(area, k)] for k in CLASSES]
        summary.append(f"| {area} | {sum(n)} | {n[0]} | {n[1]} | {n[2]} |")
    return "\n".join(["**" + counts_line(answers) + "**", "", *summary, "", *rows, ""])


def all_cases() -> list[Case]:
    from tests.probe_api_cases import API_CASES
    from tests.probe_cli_cases import CLI_CASES

    return [*CLI_CASES, *API_CASES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="markdown table to write ('-': stdout)")
    parser.add_argument("--only", default="", help="run the cases whose area or name has this")
    parser.add_argument("--kind", choices=("all", "cli", "api"), default="all")
    parser.add_argument("--fresh", action="store_true",
                        help="run each CLI case in a new interpreter (slower) instead of a child "
                             "forked after importing torch once")
    args = parser.parse_args(argv)
    from tests.probe_api_cases import namespace
    from tests.probe_files import make_files

    out = args.out if args.out == "-" else Path(args.out)
    kinds = {"all": (True, False), "cli": (True,), "api": (False,)}[args.kind]
    cases = [c for c in all_cases() if bool(c.argv) in kinds and
             args.only.lower() in f"{c.area} {c.name}".lower()]
    start = time.monotonic()

    def progress(case: Case, answer: Answer) -> None:
        print(f"[{answer.klass:5}] {case.area}: {case.name}: {answer.message[:150]}",
              file=sys.stderr, flush=True)

    if not args.fresh:
        preimport()
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        workdir = make_files(Path(tmp))
        answers = run_cases(cases, workdir, namespace=namespace, progress=progress,
                            fresh=args.fresh)
    text = table(cases, answers)
    if out == "-":
        print(text)
    else:
        out.write_text(text)
    print(f"{counts_line(answers)} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
