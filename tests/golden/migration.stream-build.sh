set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
W=/var/tmp/hcbpg-dump/r1-07_cutover
on_target() {
  local n=$1; shift
  if [ "$n" = 0 ]; then psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production "$@"; return; fi
  PGOPTIONS="-c max_parallel_maintenance_workers=0" nice -n "$n" psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -A -t -c "SELECT pg_backend_pid()" "$@" | { IFS= read -r pid || true; renice -n "$n" -p "$pid" > /dev/null 2>&1 || true; { echo "$n" > "/proc/$pid/autogroup"; } 2> /dev/null || true; cat > /dev/null; }
}
read -r n f <<< "$1"
case "$f" in
  *.list) pg_restore --cluster 15/main --no-owner --no-acl --role=rails --exit-on-error -L "$f" -f - "$W/schema.dump" | on_target "$n" -f - ;;
  *.sql) on_target "$n" -c "SET ROLE rails" -f "$f" ;;
  *) echo "build-one.sh: what is $f?" >&2; exit 2 ;;
esac
