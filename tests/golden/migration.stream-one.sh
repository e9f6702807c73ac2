set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
W=/var/tmp/hcbpg-dump/r1-07_cutover
oid=$1 fmt=$2 t=$3
case "$oid" in ''|*[!0-9]*) echo "copy-one.sh: not a table oid: $oid" >&2; exit 2 ;; esac
case "$fmt" in binary|text) ;; *) echo "copy-one.sh: not a COPY format: $fmt" >&2; exit 2 ;; esac
case "$t" in ''|*[[:cntrl:]]*) echo "copy-one.sh: table $oid: no name, or one with control characters" >&2; exit 2 ;; esac
stamp() { echo "hcbpg-time $1 $oid $(date +%s.%N)" >> "$W/times"; }
on_target() {
  local n=$1; shift
  if [ "$n" = 0 ]; then psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production "$@"; return; fi
  PGOPTIONS="-c max_parallel_maintenance_workers=0" nice -n "$n" psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -A -t -c "SELECT pg_backend_pid()" "$@" | { IFS= read -r pid || true; renice -n "$n" -p "$pid" > /dev/null 2>&1 || true; { echo "$n" > "/proc/$pid/autogroup"; } 2> /dev/null || true; cat > /dev/null; }
}
if [ "$oid" = "$(head -z -n 1 "$W/tables" | tr -d '\0')" ]; then n=0; else n=10; fi
nice -n "$n" psql -X -q -v ON_ERROR_STOP=1 -d service=hcbpg_source -c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" -c "SET TRANSACTION SNAPSHOT '$HCBPG_SNAPSHOT'" -c "COPY $t TO STDOUT (FORMAT $fmt)" -c "COMMIT" | on_target "$n" -c "BEGIN" -c "TRUNCATE ONLY $t" -c "COPY $t FROM STDIN (FORMAT $fmt, FREEZE)" -c "COMMIT"
stamp copied
shopt -s nullglob
items=("$W/build/$oid".[0-9]*)
if [ "${#items[@]}" -gt 0 ]; then printf '%s\n' "${items[@]}" | awk -v n="$n" '{ print (NR == 1 ? n : 10), $0 }' | xargs -d '\n' -P 2 -n 1 bash "$W/build-one.sh"; fi
if [ -f "$W/build/$oid.keys" ]; then on_target "$n" -c "SET ROLE rails" -f "$W/build/$oid.keys"; fi
on_target "$n" -c "SET ROLE rails" -c "ANALYZE $t"
stamp built
