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
   A line ending in ``# fails on purpose`` must exit non-zero.
   Other blocks (``text``, ``console``) are shown, not run.
2. Its ``python`` blocks, in page order, as one program in a fresh process:
   one namespace, as in a notebook. A snippet (``--8<-- "FILE:SECTION"``)
   runs the included code, which is what the page shows. A block that is one
   whole file (``--8<-- "FILE"``) shows a script that a command of step 1
   runs, and is not run again. ``plt.show()`` saves the
   current figure as ``<page>-<n>.png``, and so does the end of a block for
   each figure still open (as a notebook shows it under its cell).

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
# One process alone may use every core; MPI ranks get one XLA thread each.
SINGLE_PROCESS_ENV = mpi_env(threads_per_rank=0, MPLBACKEND="Agg")

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
BLOCK_END = "_save_figures()\n"
# After them: the globals that the caller asked to keep.
EPILOGUE = """
import numpy as _np
_np.savez("_kept.npz", **{{_k: _np.asarray(globals()[_k]) for _k in {keep!r}}})
"""


@dataclass
class PageRun:
    """The output of each command and then of the Python blocks, and the kept globals."""

    outputs: list[str] = field(default_factory=list)
    kept: dict[str, np.ndarray] = field(default_factory=dict)


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


def page_code(markdown: str, root: Path) -> tuple[list[str], list[str]]:
    """The page's command lines and the code of its Python blocks, in page order."""
    commands, blocks = [], []
    for language, _, code in FENCE.findall(markdown):
        if language == "bash":
            commands += [line for line in code.splitlines() if line.startswith(("python ", "mpiexec "))]
        elif language == "python" and not WHOLE_FILE.fullmatch(code.strip()):
            blocks.append(include_snippets(code, root))
    return commands, blocks


def run_command(line: str, root: Path, workdir: Path, timeout: float) -> str:
    """Run one command line of a page; return its standard output and error."""
    should_fail = line.rstrip().endswith("# fails on purpose")
    words = shlex.split(line, comments=True)
    if words[0] == "mpiexec" and words[1] == "-n" and words[3] == "python":
        proc = run_mpi(root / words[4], int(words[2]), *words[5:], timeout=timeout,
                       check=not should_fail, env=mpi_env(MPLBACKEND="Agg"), cwd=workdir)
    elif words[0] == "python":
        proc = subprocess.run([sys.executable, root / words[1], *words[2:]], capture_output=True,
                              text=True, timeout=timeout, env=SINGLE_PROCESS_ENV, cwd=workdir)
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
    it), and ``keep`` names globals of the Python blocks to return.
    """
    commands, blocks = page_code(page.read_text(), root)
    run = PageRun([run_command(line, root, workdir, timeout) for line in commands])
    if blocks:
        program = PRELUDE.format(page=page.stem) + "".join(f"{code}\n{BLOCK_END}" for code in blocks)
        program += EPILOGUE.format(keep=tuple(keep))
        proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              timeout=timeout, env=SINGLE_PROCESS_ENV, cwd=workdir)
        if proc.returncode:
            raise RuntimeError(f"the Python blocks of {page.name} failed\n{proc.stdout[-5000:]}{proc.stderr[-8000:]}")
        run.outputs.append(proc.stdout)
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
