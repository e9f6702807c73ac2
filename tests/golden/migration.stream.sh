set -euo pipefail
unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER
export PGSERVICEFILE=/run/hcbpg-migration/source.pgservice
stamp() { echo "hcbpg-time $1 - $(date +%s.%N)"; }
stamp start
pg_dump -d service=hcbpg_source --schema-only --exclude-schema=bucardo -Fc --lock-wait-timeout=60s --snapshot="$HCBPG_SNAPSHOT" -f /var/tmp/hcbpg-dump/r1-07_cutover/schema.dump
pg_restore -l /var/tmp/hcbpg-dump/r1-07_cutover/schema.dump | sed -E 's/^([0-9]+; [0-9]+ [0-9]+ (EXTENSION - |COMMENT - EXTENSION |TRIGGER [^ ]+ [^ ]+ bucardo_|SCHEMA - heroku_ext |COMMENT - SCHEMA heroku_ext ))/;\1/' > /var/tmp/hcbpg-dump/r1-07_cutover/schema.list
mkdir -p /var/tmp/hcbpg-dump/r1-07_cutover/build /var/tmp/hcbpg-dump/r1-07_cutover/fk
awk -v W=/var/tmp/hcbpg-dump/r1-07_cutover -f /var/tmp/hcbpg-dump/r1-07_cutover/split.awk /var/tmp/hcbpg-dump/r1-07_cutover/builds /var/tmp/hcbpg-dump/r1-07_cutover/schema.list > /var/tmp/hcbpg-dump/r1-07_cutover/post.list
/usr/lib/postgresql/15/bin/pg_restore -p 5432 --no-owner --no-acl --role=rails --exit-on-error -L /var/tmp/hcbpg-dump/r1-07_cutover/schema.list --section=pre-data -d hcb_production /var/tmp/hcbpg-dump/r1-07_cutover/schema.dump
stamp pre-data
bash /var/tmp/hcbpg-dump/r1-07_cutover/work.sh seed < /var/tmp/hcbpg-dump/r1-07_cutover/tables
pids=()
for _ in $(seq 2); do bash /var/tmp/hcbpg-dump/r1-07_cutover/work.sh & pids+=($!); done
ok=1
for p in "${pids[@]}"; do wait "$p" || ok=0; done
[ "$ok" = 1 ]
stamp tables
cat > /var/tmp/hcbpg-dump/r1-07_cutover/counts.sql <<'HCBPG_COUNTS_SQL'
SET search_path = pg_catalog;
SELECT 'HCBPG-JSON ' || json_build_object('objects', (
SELECT json_build_object(
 'schemas', (SELECT coalesce(json_object_agg(n.nspname, 'schema'), '{}') FROM pg_namespace n
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')),
 'extensions', (SELECT coalesce(json_object_agg(e.extname, n.nspname || ' ' || e.extversion), '{}')
                FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace),
 'tables', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
              (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped) || ' columns'), '{}')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')),
 'indexes', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, pg_get_indexdef(c.oid)), '{}')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('i', 'I') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')),
 'constraints', (SELECT coalesce(json_object_agg(n.nspname || '.' || coalesce(t.relname, ty.typname) || '.'
                   || co.conname, co.contype::text || ' ' || pg_get_constraintdef(co.oid)), '{}')
                 FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
                 LEFT JOIN pg_class t ON t.oid = co.conrelid LEFT JOIN pg_type ty ON ty.oid = co.contypid
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND (t.oid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = t.oid AND d.deptype = 'e'))
                 AND (ty.oid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = ty.oid AND d.deptype = 'e'))),
 'sequences', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
                 coalesce(s.last_value::text, 'not called')), '{}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
               WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')),
 'functions', (SELECT coalesce(json_object_agg(n.nspname || '.' || p.proname || '('
                 || pg_get_function_identity_arguments(p.oid) || ')', md5(coalesce(p.prosrc, '')
                 || coalesce(pg_get_function_sqlbody(p.oid), ''))), '{}')
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')),
 'views', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, c.relkind::text), '{}')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')),
 'triggers', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname || '.' || tg.tgname,
                pg_get_triggerdef(tg.oid)), '{}')
              FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT tg.tgisinternal AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp'),
 'types', (SELECT coalesce(json_object_agg(n.nspname || '.' || t.typname, t.typtype::text), '{}')
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE t.typtype IN ('e', 'd', 'r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'))
)), 'rows', (
SELECT coalesce(json_object_agg(name, n), '{}') FROM (
  SELECT n.nspname || '.' || c.relname AS name,
         (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname),
                                               false, true, '')))[1]::text::bigint AS n
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  ORDER BY 1) q), 'newest_event', (SELECT CASE WHEN to_regclass('public.events') IS NOT NULL THEN (xpath('/row/n/text()', query_to_xml('SELECT max(id) AS n FROM public."events"', false, true, '')))[1]::text::bigint END))::text;
HCBPG_COUNTS_SQL
psql -X -q -A -t -v ON_ERROR_STOP=1 -d service=hcbpg_source -c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" -c "SET TRANSACTION SNAPSHOT '$HCBPG_SNAPSHOT'" -f /var/tmp/hcbpg-dump/r1-07_cutover/counts.sql -c "COMMIT" > /var/tmp/hcbpg-dump/r1-07_cutover/counts.out & countspid=$!
/usr/lib/postgresql/15/bin/psql -p 5432 -X -q -v ON_ERROR_STOP=1 -d hcb_production -f /var/tmp/hcbpg-dump/r1-07_cutover/sequences.sql
for f in /var/tmp/hcbpg-dump/r1-07_cutover/fk/*; do
  [ -e "$f" ] || continue
  { IFS= read -r -d '' add && IFS= read -r -d '' validate; } < "$f"
  /usr/lib/postgresql/15/bin/psql -p 5432 -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -c "$add" -c "$validate"
done
stamp foreign-keys
/usr/lib/postgresql/15/bin/pg_restore -p 5432 --no-owner --no-acl --role=rails --exit-on-error -L /var/tmp/hcbpg-dump/r1-07_cutover/post.list --section=post-data -j 4 -d hcb_production /var/tmp/hcbpg-dump/r1-07_cutover/schema.dump
stamp post-data
/usr/lib/postgresql/15/bin/psql -p 5432 -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -At -c "SELECT format('ANALYZE %I.%I;', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp'" > /var/tmp/hcbpg-dump/r1-07_cutover/analyze.sql
/usr/lib/postgresql/15/bin/psql -p 5432 -X -q -v ON_ERROR_STOP=1 -d hcb_production -c "SET ROLE rails" -f /var/tmp/hcbpg-dump/r1-07_cutover/analyze.sql
stamp end
wait "$countspid"
stamp counted
