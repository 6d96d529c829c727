#!/usr/bin/env bash
# The demo ("main job"), run by `make demo` and `make demo-sim`.  Every step is a `butler` or `pipetask`
# command a user could type; each is echoed before it runs and timed.
#
# With the SDSS Stripe 82 data in $DATA (runs 4192 and 6377 of camcol 4, five bands: one frame per run and
# band) it builds $DEMO_REPO (raws with their fpM/psField/tsField, the reference catalogue, visits, the
# stripe82_demo skymap) and runs, with `pipetask run`:
#   1. Sdss/ProcessCcd.yaml (ISR, CharacterizeImage, Calibrate) on every frame   -> demo/processCcd
#   2. Sdss/DRP.yaml's coadds (visit calibrations, warps, background matching, deep coadds of both runs) and
#      the template coadds of run 4192 alone (assembleTemplateCoadd:selectVisits)  -> demo/drp
#   3. Sdss/AP.yaml's image differencing (template, subtraction, DIA sources) of the run-6377 frames
#      against those templates                                                     -> demo/ap
#   4. Sdss/SkyCorrection.yaml (full focal-plane sky) on every frame                -> demo/skyCorr
# then chains the four into `demo`, verifies the repository and writes the run report $DEMO_REPO/report.html.
#
# Without $DATA (or with SIMCAM=1, `make demo-sim`) it runs the same steps on SimCam raws simulated into
# $SIM_DIR (the r band; the set-up of tests/tasks/test_ap_simcam.py: 8 visits of 9 detectors, transients from
# the 7th visit on, the template from the three best-seeing transient-free visits, sky correction without sky
# frames), and prints the simulation's truth metrics of the difference images and DIA sources.
#
# Environment: DEMO_REPO, DATA, BANDS (SDSS bands, e.g. "r" or "g,r"; default all five), SIMCAM (1: SimCam),
# SIM_DIR, JOBS (pipetask -j), BUTLER, PIPETASK, PYTHON, TEMPLATE (the repo_template directory).
set -euo pipefail
DEMO_REPO=${DEMO_REPO:-demo_repo}
DATA=${DATA:-../shared/data/sdss_stripe82_lsst_demo}
BANDS=${BANDS:-u g r i z}
SIMCAM=${SIMCAM:-0}
SIM_DIR=${SIM_DIR:-${DEMO_REPO%/}_sim}
JOBS=${JOBS:-2}
BUTLER=${BUTLER:-butler}
PIPETASK=${PIPETASK:-pipetask}
PYTHON=${PYTHON:-python3}
TEMPLATE=${TEMPLATE:-repo_template}

step=0
timings=()
# Wall-clock seconds (to 0.1 s) since an ${EPOCHREALTIME/./} (microseconds) start.
seconds_since() { local us=$(( ${EPOCHREALTIME/./} - $1 )); printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10)); }
demo_start=${EPOCHREALTIME/./}
# Echo a command, run it, and print and record its wall time.
run() {
  local start elapsed label i
  step=$((step + 1))
  label="$(basename "$1") $2"
  for ((i = 3; i < $#; i++)); do [ "${!i}" = -p ] && label+=" $(basename "${@:i+1:1}")"; done
  printf '\n[%d] $ %s\n' "$step" "$*"
  start=${EPOCHREALTIME/./}
  "$@"
  elapsed=$(seconds_since "$start")
  printf '[%d] done in %s s\n' "$step" "$elapsed"
  timings+=("$(printf '%7s s  [%d] %s' "$elapsed" "$step" "$label")")
}

# Ingest a reference catalogue FITS file as the dimensionless `refcat` into RUN, chained into `refcats`.
ingest_refcat() {
  local path=$1 refcat_run=$2
  run "$BUTLER" register-dataset-type "$DEMO_REPO" refcat AstropyFitsTable
  # A table of files to ingest: first column the path, other columns the data ID (none for a refcat).
  printf '# %%ECSV 1.0\n# ---\n# datatype:\n# - {name: path, datatype: string}\npath\n%s\n' \
    "$(cd "$(dirname "$path")" && pwd)/$(basename "$path")" > "$staging/refcat.ecsv"
  run "$BUTLER" ingest-files "$DEMO_REPO" refcat "$refcat_run" "$staging/refcat.ecsv" --transfer copy
  run "$BUTLER" collection-chain "$DEMO_REPO" refcats "$refcat_run"
}

join() { local IFS=,; echo "$*"; }
# The SDSS bands, their visits in run 4192 (the template) and in run 6377 (the science frames).  SDSS ids: visit =
# (run x 10 + filter index (u g r i z: 0-4)) x 10000 + field; the demo frames are field 300 of run 4192 and field
# 399 of run 6377.
SDSS_BANDS=ugriz
bands=() template_visits=() science_visits=()
for band in ${BANDS//,/ }; do
  prefix=${SDSS_BANDS%%"$band"*}
  index=${#prefix}
  if [ ${#band} != 1 ] || [ "$index" = ${#SDSS_BANDS} ]; then
    echo "BANDS=$BANDS: '$band' is not an SDSS band; use some of u g r i z (e.g. BANDS=r or BANDS=g,r)." >&2
    exit 2
  fi
  bands+=("'$band'")
  template_visits+=($(( (41920 + index) * 10000 + 300 )))
  science_visits+=($(( (63770 + index) * 10000 + 399 )))
done
if [ ${#bands[@]} = 0 ]; then
  echo "BANDS is empty; give some of u g r i z (e.g. BANDS=r), or leave it unset for all five." >&2
  exit 2
fi

rm -rf "$DEMO_REPO"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

if [ "$SIMCAM" != 1 ] && [ ! -d "$DATA" ]; then
  echo "Data directory $DATA not found (set DATA=/path/to/sdss_stripe82_lsst_demo, from ../shared/data):" \
    "running the demo on simulated SimCam data instead."
  SIMCAM=1
fi

if [ "$SIMCAM" = 1 ]; then
  # SimCam: 8 r-band visits (ids 2000-2007) of the 3 x 3 detectors, transients from the 7th visit on.
  FIRST_VISIT=2000
  N_VISITS=8
  TRANSIENTS_FROM=6
  last_visit=$((FIRST_VISIT + N_VISITS - 1))
  rm -rf "$SIM_DIR"
  run "$BUTLER" simulate-raws "$SIM_DIR" --visits "$N_VISITS" --seed 23 --transients-from "$TRANSIENTS_FROM" \
    --no-sky-frames
  run "$BUTLER" create "$DEMO_REPO"
  ingest_refcat "$SIM_DIR/truth/refcat.fits" refcats/sim
  run "$BUTLER" register-instrument "$DEMO_REPO" SimCam
  run "$BUTLER" ingest-raws "$DEMO_REPO" "$SIM_DIR/raw" --transfer symlink
  run "$BUTLER" define-visits "$DEMO_REPO" SimCam
  run "$BUTLER" register-skymap "$DEMO_REPO" -C "$TEMPLATE/skymaps/simcam.yaml"
  PIPELINES=$TEMPLATE/pipelines/SimCam
  RAWS=SimCam/raw/all
  # The template: the three transient-free visits with the best seeing (the simulation's truth).
  template_visits=$("$PYTHON" -c "
from tasks.instruments.simcam import SimulationTruth
truth = SimulationTruth.load('$SIM_DIR')
candidates = truth.visit_ids[:$TRANSIENTS_FROM]
print(','.join(str(v) for v in sorted(sorted(candidates, key=lambda v: truth.visit(v)['fwhm0'])[:3])))")
  echo "Template visits (the best seeing of the transient-free visits" \
    "$FIRST_VISIT-$((FIRST_VISIT + TRANSIENTS_FROM - 1))): $template_visits"
  ALL_QUERY="visit IN ($FIRST_VISIT..$last_visit)"
  DRP_QUERY="visit IN ($template_visits)"
  DRP_CONFIG=()
  AP_QUERY="visit IN ($((FIRST_VISIT + TRANSIENTS_FROM))..$last_visit)"
  # The simulation has no sky-frame pattern (as in tests/tasks/test_ap_simcam.py), so no sky frames either.
  SKY_CONFIG=(-c skyCorr:doSky=false)
else
  run "$BUTLER" create "$DEMO_REPO"
  ingest_refcat "$DATA/ref_cat/stars.fits" refcats/stripe82
  run "$BUTLER" query-collections "$DEMO_REPO" --chains tree
  run "$BUTLER" query-datasets "$DEMO_REPO" refcat --collections refcats --show-uri
  run "$PYTHON" -c "from butler import Butler; t = Butler('$DEMO_REPO').get('refcat', collections='refcats'); print(len(t), 'reference stars; columns:', ', '.join(t.colnames))"
  run "$BUTLER" register-instrument "$DEMO_REPO" Sdss
  run "$BUTLER" ingest-raws "$DEMO_REPO" "$DATA/input" --transfer symlink
  run "$BUTLER" define-visits "$DEMO_REPO" SDSS
  run "$BUTLER" register-skymap "$DEMO_REPO" -C "$TEMPLATE/skymaps/stripe82_demo.yaml"
  run "$BUTLER" query-dimension-records "$DEMO_REPO" exposure
  PIPELINES=$TEMPLATE/pipelines/Sdss
  RAWS=SDSS/raw/all
  ALL_QUERY="band IN ($(join "${bands[@]}"))"
  DRP_QUERY=$ALL_QUERY
  DRP_CONFIG=(-c "assembleTemplateCoadd:selectVisits=[$(join "${template_visits[@]}")]")
  AP_QUERY="$ALL_QUERY AND visit IN ($(join "${science_visits[@]}"))"
  SKY_CONFIG=()
  run "$BUTLER" query-data-ids "$DEMO_REPO" visit detector tract patch -d "$ALL_QUERY"
fi

run "$PIPETASK" run -b "$DEMO_REPO" -p "$PIPELINES/ProcessCcd.yaml" -i "$RAWS,refcats" -o demo/processCcd \
  -d "$ALL_QUERY" --register-dataset-types -j "$JOBS"
run "$BUTLER" query-datasets "$DEMO_REPO" calexp src --collections demo/processCcd
run "$PYTHON" -c "
from astropy.wcs.utils import proj_plane_pixel_scales
from butler import Butler
from tasks.measure_psf import psf_effective_fwhm
b = Butler('$DEMO_REPO', collections='demo/processCcd')
for ref in b.query_datasets('calexp', collections='demo/processCcd'):
    bbox = b.get('calexp.bbox', ref.data_id)
    scale = proj_plane_pixel_scales(b.get('calexp.wcs', ref.data_id)).mean() * 3600
    psf = b.get('calexp.psf', ref.data_id)
    fwhm, fwhm_eff = psf.fwhm(*bbox.center), psf_effective_fwhm(psf, *bbox.center)
    calib = b.get('calexp.photoCalib', ref.data_id)
    md = b.get('calibrate_metadata', ref.data_id)['calibrate']
    print(f\"visit {ref.data_id['visit']} detector {ref.data_id['detector']}: PSF FWHM {fwhm * scale:.3f} arcsec\",
          f'(effective, as SDSS psField: {fwhm_eff * scale:.3f}),',
          f'zero point {calib.instrumental_zero_point:.3f} mag, {len(b.get(\"src\", ref.data_id))} sources,',
          f\"astrometric RMS {md['astromRms']:.3f} arcsec\")
"
run "$PIPETASK" run -b "$DEMO_REPO" -p "$PIPELINES/DRP.yaml#coaddition,templateCoaddition" \
  -i demo/processCcd,skymaps -o demo/drp -d "$DRP_QUERY" "${DRP_CONFIG[@]}" \
  --register-dataset-types -j "$JOBS"
run "$BUTLER" query-datasets "$DEMO_REPO" deepCoadd templateCoadd --collections demo/drp
run "$PIPETASK" run -b "$DEMO_REPO" -p "$PIPELINES/AP.yaml#diffim" -i demo/processCcd,demo/drp -o demo/ap \
  -d "$AP_QUERY" --register-dataset-types -j "$JOBS"
run "$BUTLER" query-datasets "$DEMO_REPO" difference diaSrc --collections demo/ap
run "$PIPETASK" run -b "$DEMO_REPO" -p "$PIPELINES/SkyCorrection.yaml#skyCorr" -i demo/processCcd -o demo/skyCorr \
  -d "$ALL_QUERY" "${SKY_CONFIG[@]}" --register-dataset-types -j "$JOBS"
run "$BUTLER" collection-chain "$DEMO_REPO" demo demo/skyCorr demo/ap demo/drp demo/processCcd
run "$BUTLER" query-collections "$DEMO_REPO" demo --chains tree
if [ "$SIMCAM" = 1 ]; then
  run "$PYTHON" -m tasks.instruments.simcam.metrics "$DEMO_REPO" "$SIM_DIR" --collection demo/ap
fi
run "$BUTLER" verify "$DEMO_REPO"
# Last, as the report is not a dataset (verify would list it as an orphan file).
run "$PIPETASK" report -b "$DEMO_REPO" --output-run demo --html "$DEMO_REPO/report.html"

printf '\nWall time per step:\n'
printf '%s\n' "${timings[@]}"
printf '%7s s  total\n' "$(seconds_since "$demo_start")"
echo "The run report is $DEMO_REPO/report.html."
