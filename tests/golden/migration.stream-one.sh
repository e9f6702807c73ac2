set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
W=/var/tmp/hcbpg-dump/r1-07_cutover
read -r oid fmt t <<< "$1"
stamp() { echo "hcbpg-time $1 $oid $(date +%s.%N)" >> "$W/times"; }
psql -X -q -v ON_ERROR_STOP=1 -d service=hcbpg_source -c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" -c "SET TRANSACTION SNAPSHOT '$HCBPG_SNAPSHOT'" -c "COPY $t TO STDOUT (FORMAT $fmt)" -c "COMMIT" | psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "BEGIN" -c "TRUNCATE ONLY $t" -c "COPY $t FROM STDIN (FORMAT $fmt, FREEZE)" -c "COMMIT"
stamp copied
shopt -s nullglob
items=("$W/build/$oid".*.list "$W/build/$oid".*.sql)
if [ "${#items[@]}" -gt 0 ]; then printf '%s\n' "${items[@]}" | xargs -d '\n' -P 2 -n 1 bash "$W/build-one.sh"; fi
if [ -f "$W/build/$oid.keys" ]; then psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -f "$W/build/$oid.keys"; fi
psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -c "ANALYZE $t"
stamp built
