"""Run the code on the documentation pages, so that the docs cannot rot.

Shared by tests/test_docs.py (which runs a copy of docs/) and
scripts/build_docs.sh (which runs docs/ itself and keeps the figures). For
one page, from a scratch working directory:

1. Every command line of its ``bash`` blocks, in page order:
   ``python FILE ARGS`` or ``mpiexec -n N python FILE ARGS``, with ``FILE``
   relative to the root of the docs tree (where mkdocs.yml is), as a reader
   types it there. ``mpiexec`` starts a real MPI job (``run_mpi`` of
   tests/conftest.py), with the launcher that ``$DIFFOPT_MPIEXEC`` names
   (``srun``, a site's ``mpiexec``), else the environment's ``mpiexec``.
   A line ending in ``# fails on purpose`` must exit non-zero, and its block
   must be followed by the output it shows (3.), so that it fails for the
   reason the page gives, not any reason. Other blocks (``text``,
   ``console``) are shown, not run.
2. Its ``python`` blocks, in page order, as one program in a fresh process:
   one namespace, as in a notebook. A snippet (``--8<-- "FILE:SECTION"``)
   runs the included code, which is what the page shows. A block that is one
   whole file (``--8<-- "FILE"``) shows a script that a command of step 1
   runs, and is not run again. ``plt.show()`` saves the
   current figure as ``<page>-<n>.png``, and so does the end of a block for
   each figure still open (as a notebook shows it under its cell).
3. A ``text`` block titled "Output" (```` ```text title="Output" ````) shows
   what the code block just above it prints: the last command of a
   ``bash`` block (its standard output and error), or a ``python`` block (its
   standard output). Its lines must appear, in order and one after the
   other, in what that code printed, with paths shown relative to the root
   of the docs tree and Open MPI's own notices (boxed in dashes) left
   out. A line ``...`` stands for any number of lines, and ``...`` within a
   line for any text (as doctest's ELLIPSIS).

Every PNG left in the working directory is then copied into the images
folder. The Markdown shows them as ``![...](images/NAME.png)``.

    python tests/docs_harness.py [--images DIR] [PAGE.md ...]
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, mpi_env, run_mpi  # noqa: E402

FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.M | re.S)
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\w+))?"$', re.M)
WHOLE_FILE = re.compile(r'--8<-- "[^":]+"')
SHOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(images/([^)]+)\)")
SHOWN_OUTPUT = re.compile(r'\btitle="Output"')
FAILS_ON_PURPOSE = "# fails on purpose"
# Printed at the end of each Python block, to tell the blocks' outputs apart.
BLOCK_SEPARATOR = "<<<end of a docs block>>>"
OPEN_MPI_NOTICE = re.compile(r"^ ?-{70,}\n.*?^-{70,}\n", re.M | re.S)


def single_process_env() -> dict:
    """One process alone may use every core (MPI ranks get one XLA thread each); taken when run, with its TMPDIR."""
    return mpi_env(threads_per_rank=0, MPLBACKEND="Agg")


# Before the page's blocks: figures are saved, not shown.
PRELUDE = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as _plt
_figures = 0
def _save_figures(*args, **kwargs):
    global _figures
    for _number in _plt.get_fignums():
        _figures += 1
        _plt.figure(_number).savefig(f"{page}-{{_figures}}.png", dpi=100, bbox_inches="tight")
    _plt.close("all")
_plt.show = _save_figures
"""
BLOCK_END = f"_save_figures()\nprint({BLOCK_SEPARATOR!r}, flush=True)\n"
# After them: the globals that the caller asked to keep.
# (A dict is kept as its items, NAME[KEY].)
EPILOGUE = """
import numpy as _np
_kept = {{}}
for _k in {keep!r}:
    _v = globals()[_k]
    _kept.update({{f"{{_k}}[{{_kk}}]": _np.asarray(_vv) for _kk, _vv in _v.items()}} if isinstance(_v, dict)
                 else {{_k: _np.asarray(_v)}})
_np.savez("_kept.npz", **_kept)
"""


@dataclass
class PageRun:
    """The output of each command and then of the Python blocks, and the kept globals."""

    outputs: list[str] = field(default_factory=list)
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    shown_outputs_checked: int = 0


def include_snippets(code: str, root: Path) -> str:
    """Replace each ``--8<-- "FILE[:SECTION]"`` line by what pymdownx.snippets shows there."""

    def included(match: re.Match) -> str:
        text = (root / match.group(1)).read_text()
        if match.group(2):
            section = re.search(
                rf"--8<-- \[start:{match.group(2)}\]\n(.*?)^[^\n]*--8<-- \[end:{match.group(2)}\]",
                text, re.M | re.S,
            )
            if section is None:
                raise ValueError(f"no section {match.group(2)!r} in {match.group(1)}")
            text = section.group(1)
        return text.rstrip("\n")

    return SNIPPET.sub(included, code)


@dataclass
class CodeBlock:
    """A code block that runs: command lines (bash) or Python code, and the output shown under it."""

    language: str
    code: str | list[str]
    shown_output: str | None = None


def page_blocks(markdown: str, root: Path) -> list[CodeBlock]:
    """The page's runnable blocks, in page order, each with the output shown under it (if any)."""
    blocks: list[CodeBlock] = []
    for language, info, code in FENCE.findall(markdown):
        if language == "bash":
            lines = [line for line in code.splitlines() if line.startswith(("python ", "mpiexec "))]
            if lines:
                blocks.append(CodeBlock("bash", lines))
        elif language == "python" and not WHOLE_FILE.fullmatch(code.strip()):
            blocks.append(CodeBlock("python", include_snippets(code, root)))
        elif language == "text" and SHOWN_OUTPUT.search(info):
            if not blocks or blocks[-1].shown_output is not None:
                raise ValueError(f"an Output block follows no code block that runs:\n{code}")
            blocks[-1].shown_output = code
    return blocks


def shown_output_pattern(shown: str) -> re.Pattern:
    """A regex for the lines of ``shown``: ``...`` lines match any lines, ``...`` in a line any text."""
    parts = []
    for line in shown.rstrip("\n").splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            text = "[^\n]*?".join(re.escape(piece) for piece in line.rstrip().split("..."))
            parts.append(rf"{text}[ \t]*\n")
    return re.compile("^" + "".join(parts), re.M)


def check_shown_output(shown: str, printed: str, what: str, root: Path) -> None:
    """Raise unless ``printed`` shows the lines of ``shown`` (see the module docstring)."""
    # Open MPI's own notices (boxed in lines of dashes) land anywhere among
    # the ranks' output, and its output forwarding may add NUL characters:
    # neither is part of what a page shows.
    printed = OPEN_MPI_NOTICE.sub("", printed.replace(str(root) + "/", "").replace("\0", ""))
    if not printed.endswith("\n"):
        printed += "\n"
    if not shown_output_pattern(shown).search(printed):
        raise AssertionError(
            f"the page shows this output of {what}:\n{shown}\nbut it printed:\n{printed[-6000:]}"
        )


def run_command(line: str, root: Path, workdir: Path, timeout: float) -> str:
    """Run one command line of a page; return its standard output and error."""
    should_fail = line.rstrip().endswith(FAILS_ON_PURPOSE)
    words = shlex.split(line, comments=True)
    if words[0] == "mpiexec" and words[1] == "-n" and words[3] == "python":
        proc = run_mpi(root / words[4], int(words[2]), *words[5:], timeout=timeout,
                       check=not should_fail, env=mpi_env(MPLBACKEND="Agg"), cwd=workdir)
    elif words[0] == "python":
        proc = subprocess.run([sys.executable, root / words[1], *words[2:]], capture_output=True,
                              text=True, timeout=timeout, env=single_process_env(), cwd=workdir)
        if proc.returncode and not should_fail:
            raise RuntimeError(f"{line} exited with {proc.returncode}\n{proc.stdout[-5000:]}{proc.stderr[-5000:]}")
    else:
        raise ValueError(f"cannot run {line!r}: expected 'python FILE ...' or 'mpiexec -n N python FILE ...'")
    if should_fail and proc.returncode == 0:
        raise RuntimeError(f"{line} succeeded, but the page says it fails\n{proc.stdout[-5000:]}")
    return proc.stdout + proc.stderr


def run_page(page: Path, root: Path, workdir: Path, images: Path, keep: tuple[str, ...] = (),
             timeout: float = 600) -> PageRun:
    """Run ``page``'s code in ``workdir`` and copy the figures it draws into ``images``.

    ``root`` is the root of the docs tree (paths on the page are relative to
    it), and ``keep`` names globals of the Python blocks to return. Every
    output the page shows is compared with what its code printed.
    """
    blocks = page_blocks(page.read_text(), root)
    run = PageRun()
    for block in (b for b in blocks if b.language == "bash"):
        for line in block.code:
            run.outputs.append(run_command(line, root, workdir, timeout))
        if block.shown_output is not None:
            check_shown_output(block.shown_output, run.outputs[-1], block.code[-1], root)
            run.shown_outputs_checked += 1
        elif any(line.rstrip().endswith(FAILS_ON_PURPOSE) for line in block.code):
            raise ValueError(f"{block.code[-1]!r} fails on purpose: the page must show how (an Output block)")
    python = [b for b in blocks if b.language == "python"]
    if python:
        program = PRELUDE.format(page=page.stem) + "".join(f"{b.code}\n{BLOCK_END}" for b in python)
        program += EPILOGUE.format(keep=tuple(keep))
        proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              timeout=timeout, env=single_process_env(), cwd=workdir)
        if proc.returncode:
            raise RuntimeError(f"the Python blocks of {page.name} failed\n{proc.stdout[-5000:]}{proc.stderr[-8000:]}")
        printed = proc.stdout.split(BLOCK_SEPARATOR + "\n")
        run.outputs.append("".join(printed))
        for number, (block, output) in enumerate(zip(python, printed), 1):
            if block.shown_output is not None:
                check_shown_output(block.shown_output, output, f"Python block {number} of {page.name}", root)
                run.shown_outputs_checked += 1
        with np.load(workdir / "_kept.npz") as kept:
            run.kept = {name: kept[name] for name in kept.files}
    images.mkdir(parents=True, exist_ok=True)
    for png in workdir.glob("*.png"):
        shutil.copy(png, images / png.name)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to run (default: every page of docs/)")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images", help="where the figures go")
    args = parser.parse_args()
    for page in args.pages or sorted((REPO / "docs").glob("*.md")):
        print(f"running {page}", flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            run_page(page.resolve(), REPO, Path(workdir), args.images.resolve())


if __name__ == "__main__":
    main()
