#!/usr/bin/env bash
# Run the code on every documentation page (as tests/test_docs.py does),
# write the figures it draws into docs/images/, then build the site into
# site/ with `mkdocs build --strict`. Commit the new figures, so that the
# site also builds from a clean checkout.
#
#     bash scripts/build_docs.sh [docs/PAGE.md ...]    # default: every page
#
# The pages' mpiexec commands start with $DIFFOPT_MPIEXEC when it is set
# (srun, a site's mpiexec), else with the environment's mpiexec.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python tests/docs_harness.py --images docs/images "$@"
.venv/bin/mkdocs build --strict --site-dir site
