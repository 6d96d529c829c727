#!/usr/bin/env bash
# The demo ("main job"), run by `make demo`.  Every step is a `butler` or `pipetask` command a user
# could type; each is echoed before it runs.  For now it builds a repository from the SDSS Stripe 82
# data in $DATA (raws with their fpM/psField/tsField, the reference catalogue, a skymap), defines
# visits and runs ProcessCcd (ISR, CharacterizeImage, Calibrate) with `pipetask run`; the later
# pipelines are added as they land.
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
run "$PIPETASK" run -b "$DEMO_REPO" -p "$TEMPLATE/pipelines/Sdss/ProcessCcd.yaml" -i SDSS/raw/all,refcats -o demo/processCcd --register-dataset-types -j 2
run "$BUTLER" query-datasets "$DEMO_REPO" calexp src --collections demo/processCcd -d "band = 'r'"
run "$PYTHON" -c "
from butler import Butler
from tasks.measure_psf import psf_effective_fwhm
b = Butler('$DEMO_REPO')
for ref in b.query_datasets('calexp', collections='demo/processCcd', where=\"band = 'r'\"):
    psf = b.get('calexp.psf', ref.data_id, collections='demo/processCcd')
    calib = b.get('calexp.photoCalib', ref.data_id, collections='demo/processCcd')
    src = b.get('src', ref.data_id, collections='demo/processCcd')
    md = b.get('calibrate_metadata', ref.data_id, collections='demo/processCcd')
    print(ref.data_id['visit'], 'PSF FWHM_eff %.3f arcsec,' % (psf_effective_fwhm(psf, 1024, 744) * 0.396),
          'zero point %.3f mag,' % calib.instrumental_zero_point, '%d sources,' % len(src),
          'astrometric RMS %.3f arcsec' % md['calibrate']['astromRms'])
"
run "$BUTLER" verify "$DEMO_REPO"
