#!/usr/bin/env bash
# The demo ("main job"), run by `make demo`.  Every step is a `butler` or `pipetask` command a user
# could type; each is echoed before it runs.  For now it builds a repository from the SDSS Stripe 82
# data in $DATA (raws with their fpM/psField/tsField, the reference catalogue, a skymap), defines
# visits and runs ISR with `pipetask run`; the later pipelines are added as they land.
set -euo pipefail
DEMO_REPO=${DEMO_REPO:-demo_repo}
DATA=${DATA:-../shared/data/sdss_stripe82_lsst_demo}
BUTLER=${BUTLER:-butler}
PIPETASK=${PIPETASK:-pipetask}
PYTHON=${PYTHON:-python3}
TEMPLATE=${TEMPLATE:-repo_template}

run() { printf '\n$ %s\n' "$*"; "$@"; }

if [ ! -d "$DATA" ]; then
  echo "Data directory $DATA not found: set DATA=/path/to/sdss_stripe82_lsst_demo (from ../shared/data)." >&2
  exit 1
fi
rm -rf "$DEMO_REPO"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

run "$BUTLER" create "$DEMO_REPO"
run "$BUTLER" register-dataset-type "$DEMO_REPO" refcat AstropyFitsTable
# A table of files to ingest: first column the path, other columns the data ID (none for a refcat).
printf '# %%ECSV 1.0\n# ---\n# datatype:\n# - {name: path, datatype: string}\npath\n%s\n' \
  "$(cd "$DATA/ref_cat" && pwd)/stars.fits" > "$staging/refcat.ecsv"
run "$BUTLER" ingest-files "$DEMO_REPO" refcat refcats/stripe82 "$staging/refcat.ecsv" --transfer copy
run "$BUTLER" collection-chain "$DEMO_REPO" refcats refcats/stripe82
run "$BUTLER" query-collections "$DEMO_REPO" --chains tree
run "$BUTLER" query-datasets "$DEMO_REPO" refcat --collections refcats --show-uri
run "$PYTHON" -c "from butler import Butler; t = Butler('$DEMO_REPO').get('refcat', collections='refcats'); print(len(t), 'reference stars; columns:', ', '.join(t.colnames))"

run "$BUTLER" register-instrument "$DEMO_REPO" Sdss
run "$BUTLER" ingest-raws "$DEMO_REPO" "$DATA/input" --transfer symlink
run "$BUTLER" define-visits "$DEMO_REPO" SDSS
run "$BUTLER" register-skymap "$DEMO_REPO" -C "$TEMPLATE/skymaps/stripe82_demo.yaml"
run "$BUTLER" query-dimension-records "$DEMO_REPO" exposure
run "$BUTLER" query-data-ids "$DEMO_REPO" visit detector tract patch -d "band = 'r'"
run "$PIPETASK" run -b "$DEMO_REPO" -p "$TEMPLATE/pipelines/Sdss/ISR.yaml" -i SDSS/raw/all -o demo/isr --register-dataset-types -j 2
run "$BUTLER" query-datasets "$DEMO_REPO" postISRCCD --collections demo/isr
run "$PYTHON" -c "
from butler import Butler
import numpy as np
b = Butler('$DEMO_REPO')
for ref in b.query_datasets('postISRCCD', collections='demo/isr', where=\"band = 'r'\"):
    exp = b.get(ref)
    print(ref.data_id, 'median sky %.1f DN, median variance %.1f DN^2, %d SAT pixels' % (
        np.median(exp.image), np.median(exp.variance), exp.mask.get_plane('SAT').sum()))
"
run "$BUTLER" verify "$DEMO_REPO"
