set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
W=/var/tmp/hcbpg-dump/r1-07_cutover
export LC_ALL=C
stamp() { echo "hcbpg-time $1 $2 $(date +%s.%N)" >> "$W/times"; }
if [ "${1:-}" = seed ]; then
  mkdir -p "$W/q" "$W/run" "$W/left" "$W/done"
  i=0
  while IFS= read -r -d '' oid && IFS= read -r -d '' fmt && IFS= read -r -d '' t; do
    i=$((i + 1))
    printf '%s\0%s\0%s\0' "$oid" "$fmt" "$t" > "$W/q/c-$(printf '%06d' "$i")"
  done
  exit 0
fi
trap '[ $? = 0 ] || : > "$W/failed"' EXIT
exec 9> "$W/q.lock"
on_target() { PGOPTIONS="-c max_parallel_maintenance_workers=0" /usr/lib/postgresql/15/bin/psql -p 5432 -X -q -v ON_ERROR_STOP=1 -d hcb_production "$@"; }
check_table() {
  case "$1" in ''|*[!0-9]*) echo "work.sh: not a table oid: $1" >&2; exit 2 ;; esac
  case "$2" in ''|*[[:cntrl:]]*) echo "work.sh: table $1: no name, or one with control characters" >&2; exit 2 ;; esac
}
finish_table() {
  local f base rest child parent
  if [ -f "$W/build/$1.keys" ]; then on_target -c "SET ROLE rails" -f "$W/build/$1.keys"; fi
  on_target -c "SET ROLE rails" -c "ANALYZE $2"
  stamp built "$1"
  flock 9
  : > "$W/done/$1"
  for f in "$W"/fk/*."$1".* "$W"/fk/*.*."$1"; do
    [ -e "$f" ] || continue
    base=${f##*/} rest=${base#*.}
    child=${rest%%.*} parent=${rest#*.}
    if [ -e "$W/done/$child" ] && [ -e "$W/done/$parent" ]; then mv "$f" "$W/q/f-${base%%.*}"; fi
  done
  flock -u 9
}
foreign_key() {
  local add validate
  { IFS= read -r -d '' add && IFS= read -r -d '' validate; } < "$1"
  flock "$W/fk.lock" /usr/lib/postgresql/15/bin/psql -p 5432 -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -c "$add"
  on_target -c "SET ROLE rails" -c "$validate"
  flock 9
  rm -f "$1"
  flock -u 9
}
copy_table() {
  local oid fmt t n
  { IFS= read -r -d '' oid && IFS= read -r -d '' fmt && IFS= read -r -d '' t; } < "$1"
  check_table "$oid" "$t"
  case "$fmt" in binary|text) ;; *) echo "work.sh: not a COPY format: $fmt" >&2; exit 2 ;; esac
  stamp begun "$oid"
  psql -X -q -v ON_ERROR_STOP=1 -d service=hcbpg_source -c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" -c "SET TRANSACTION SNAPSHOT '$HCBPG_SNAPSHOT'" -c "COPY $t TO STDOUT (FORMAT $fmt)" -c "COMMIT" | on_target -c "BEGIN" -c "TRUNCATE ONLY $t" -c "COPY $t FROM STDIN (FORMAT $fmt, FREEZE)" -c "COMMIT"
  stamp copied "$oid"
  local items=("$W/build/$oid".[0-9]*)
  flock 9
  echo "${#items[@]}" > "$W/left/$oid"
  for f in "${items[@]}"; do
    n=${f#"$W/build/$oid."}
    printf '%s\0%s\0%s\0' "$oid" "$t" "$f" > "$W/q/b-${n%%.*}"
  done
  rm -f "$1"
  flock -u 9
  if [ "${#items[@]}" = 0 ]; then finish_table "$oid" "$t"; fi
}
build() {
  local oid t f left
  { IFS= read -r -d '' oid && IFS= read -r -d '' t && IFS= read -r -d '' f; } < "$1"
  check_table "$oid" "$t"
  case "$f" in
    "$W/build/$oid".*.list) /usr/lib/postgresql/15/bin/pg_restore -p 5432 --no-owner --no-acl --role=rails --exit-on-error -L "$f" -f - "$W/schema.dump" | on_target -f - ;;
    "$W/build/$oid".*.sql) on_target -c "SET ROLE rails" -f "$f" ;;
    *) echo "work.sh: what is $f?" >&2; exit 2 ;;
  esac
  flock 9
  left=$(($(cat "$W/left/$oid") - 1))
  echo "$left" > "$W/left/$oid"
  rm -f "$1"
  flock -u 9
  if [ "$left" = 0 ]; then finish_table "$oid" "$t"; fi
}
shopt -s nullglob
while [ ! -e "$W/failed" ]; do
  flock 9
  jobs=("$W"/q/*)
  if [ "${#jobs[@]}" = 0 ]; then
    running=("$W"/run/*)
    flock -u 9
    if [ "${#running[@]}" = 0 ]; then exit 0; fi
    sleep 0.05
    continue
  fi
  job="$W/run/${jobs[0]##*/}"
  mv "${jobs[0]}" "$job"
  flock -u 9
  case "$job" in
    */c-*) copy_table "$job" ;;
    */b-*) build "$job" ;;
    */f-*) foreign_key "$job" ;;
  esac
done
exit 1
