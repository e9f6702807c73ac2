set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
W=/var/tmp/hcbpg-dump/r1-07_cutover
read -r oid fmt t <<< "$1"
stamp() { echo "hcbpg-time $1 $oid $(date +%s.%N)" >> "$W/times"; }
psql -X -q -v ON_ERROR_STOP=1 -d service=hcbpg_source -c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" -c "SET TRANSACTION SNAPSHOT '$HCBPG_SNAPSHOT'" -c "COPY $t TO STDOUT (FORMAT $fmt)" -c "COMMIT" | psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "BEGIN" -c "TRUNCATE ONLY $t" -c "COPY $t FROM STDIN (FORMAT $fmt, FREEZE)" -c "COMMIT"
stamp copied
shopt -s nullglob
pids=()
for f in "$W/build/$oid".*.list; do pg_restore --cluster 15/main --no-owner --no-acl --role=rails --exit-on-error -L "$f" -d hcb_production "$W/schema.dump" & pids+=($!); done
for f in "$W/build/$oid".*.sql; do psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -f "$f" & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; [ "$rc" = 0 ]
if [ -f "$W/build/$oid.keys" ]; then psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -f "$W/build/$oid.keys"; fi
psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -c "ANALYZE $t"
stamp built
