set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
W=/var/tmp/hcbpg-dump/r1-07_cutover
case "$1" in
  *.list) pg_restore --cluster 15/main --no-owner --no-acl --role=rails --exit-on-error -L "$1" -d hcb_production "$W/schema.dump" ;;
  *.sql) psql --cluster 15/main -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -f "$1" ;;
  *) echo "build-one.sh: what is $1?" >&2; exit 2 ;;
esac
