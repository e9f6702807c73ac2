"""Catalog SQL of the streamed transfer, run in the source's exported snapshot: the build plan (each
table's indexes and keys, the foreign keys) and the tables to copy with their COPY format."""

from __future__ import annotations

from hcbpg.pg.inventory import USER_NS, not_ext_member, render_control_char_names_sql

#: the schemas a transfer moves: the user's, never Bucardo's own (the online transfer's delta tables)
TRANSFER_NS = USER_NS + " AND n.nspname <> 'bucardo'"

#: the transfer's names that hold a control character (a JSON array, each quoted by the server); read
#: first in the session that exports the snapshot, so in the very snapshot every copy uses: any refuses
#: the transfer before a name reaches a script
REFUSED_NAMES_SQL = render_control_char_names_sql(TRANSFER_NS)

#: separates the fields of the build plan (names with control characters are left to the final pass)
_US = "\x1f"

#: how costly an index build is, for the order of a table's builds: GIN, GiST and SP-GiST first (they
#: build on one CPU, several times slower per row than a B-tree: the lab's GIN over jsonb took 13 s
#: where the same table's primary key took 2), then the largest
_BUILD_COST = ("CASE WHEN (SELECT a.amname FROM pg_am a WHERE a.oid = {index}.relam) IN ('gin', 'gist', 'spgist') "
               "THEN 0 ELSE 1 END AS slow, pg_relation_size({index}.oid) AS size")

#: the build plan, in the source's snapshot: for each plain table, the entries built right after its
#: rows, the costliest first.  One line per entry: table oid, kind, "classid objid" of its TOC entry,
#: the start of that TOC entry's text (desc, schema, tag) and, for keys, the unique index and the ALTER TABLE.
#:   I: a plain index (not a constraint's), restored from the dump by pg_restore as it is;
#:   K: a primary key or unique constraint: its unique index is built like any other index (so at
#:      the same time as the table's other indexes), then ADD CONSTRAINT ... USING INDEX.  Keys that
#:      are deferrable, clustered on, or the replica identity stay with pg_restore;
#:   F: a (validated) foreign key between plain tables, once every table is loaded: added NOT VALID
#:      (no scan), then VALIDATE CONSTRAINT, N at a time.  VALIDATE checks every row as ADD does, but
#:      locks the referenced table only in ROW SHARE mode, so the checks of different tables run at once.
BUILDS_SQL = f"""
SELECT b FROM (
  SELECT concat_ws(E'\\x1f', t.oid, 'I', '1259 ' || ic.oid, format('INDEX %s %s ', n.nspname, ic.relname)) AS b,
         n.nspname || t.relname || ic.relname AS names, t.oid AS tbl, {_BUILD_COST.format(index='ic')}
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  WHERE t.relkind = 'r' AND NOT t.relispartition AND {TRANSFER_NS} AND {not_ext_member('pg_class', 't.oid')}
    AND i.indisvalid AND ic.relnamespace = t.relnamespace
    AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = ic.oid AND co.conrelid = t.oid
                    AND co.contype IN ('p', 'u', 'x'))
  UNION ALL
  SELECT concat_ws(E'\\x1f', t.oid, 'K', '2606 ' || co.oid,
                   format('CONSTRAINT %s %s %s ', n.nspname, t.relname, co.conname),
                   pg_get_indexdef(co.conindid) || ';',
                   format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s USING INDEX %I;', n.nspname, t.relname,
                          co.conname, CASE co.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, co.conname)),
         n.nspname || t.relname || co.conname || pg_get_indexdef(co.conindid), t.oid,
         {_BUILD_COST.format(index='ic')}
  FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class ic ON ic.oid = co.conindid JOIN pg_index i ON i.indexrelid = ic.oid
  WHERE co.contype IN ('p', 'u') AND t.relkind = 'r' AND NOT t.relispartition AND {TRANSFER_NS}
    AND {not_ext_member('pg_class', 't.oid')} AND ic.relname = co.conname AND ic.relnamespace = t.relnamespace
    AND NOT co.condeferrable AND NOT i.indisclustered AND NOT i.indisreplident AND i.indisvalid
  UNION ALL
  SELECT concat_ws(E'\\x1f', t.oid, 'F', '2606 ' || co.oid,
                   format('FK CONSTRAINT %s %s %s ', n.nspname, t.relname, co.conname),
                   format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s NOT VALID;', n.nspname, t.relname, co.conname,
                          pg_get_constraintdef(co.oid)),
                   format('ALTER TABLE ONLY %I.%I VALIDATE CONSTRAINT %I;', n.nspname, t.relname, co.conname),
                   -- the TOC entry of the referenced key: the foreign key waits for pg_restore unless it was built
                   coalesce((SELECT '2606 ' || k.oid FROM pg_constraint k WHERE k.conindid = co.conindid
                             AND k.conrelid = co.confrelid AND k.contype IN ('p', 'u', 'x')),
                            '1259 ' || co.conindid)),
         n.nspname || t.relname || co.conname || pg_get_constraintdef(co.oid), t.oid, 2, 0
  FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class r ON r.oid = co.confrelid
  WHERE co.contype = 'f' AND co.convalidated AND co.conparentid = 0 AND t.relkind = 'r' AND NOT t.relispartition
    AND r.relkind = 'r' AND NOT r.relispartition AND {TRANSFER_NS} AND {not_ext_member('pg_class', 't.oid')}
) q WHERE names !~ '[[:cntrl:]]' ORDER BY tbl, slow, size DESC, b;"""

#: the tables to copy, largest first: oid, COPY format, name quoted by the server (three fields, which the
#: session writes NUL-separated: a name is never split or read as a line).  Binary when every column's
#: type (its base type for a domain, and its element type for an array) is a base or enum type, or a
#: built-in one, whose send and receive functions are the server's own (internal language, as citext's
#: are): then both ends read and write the same bytes on any server; text otherwise.  A name with a
#: control character is never listed (the session refused the transfer before: :data:`REFUSED_NAMES_SQL`).
TABLES_SQL = f"""
SELECT c.oid, CASE WHEN coalesce(b.ok, true) THEN 'binary' ELSE 'text' END, format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT bool_and(x.typsend <> 0 AND x.typreceive <> 0 AND (x.typtype IN ('b', 'e') OR x.oid < 16384)
                  AND (SELECT bool_and(p.prolang = 12) FROM pg_proc p
                       WHERE p.oid IN (x.typsend::oid, x.typreceive::oid))) AS ok
  FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
  CROSS JOIN LATERAL (VALUES (bt.oid), (CASE WHEN bt.typcategory = 'A' THEN nullif(bt.typelem, 0) END)) v(t)
  JOIN pg_type x ON x.oid = v.t
  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) b ON true
WHERE c.relkind = 'r' AND {TRANSFER_NS} AND {not_ext_member('pg_class', 'c.oid')}
  AND n.nspname !~ '[[:cntrl:]]' AND c.relname !~ '[[:cntrl:]]'
ORDER BY pg_relation_size(c.oid) DESC, 1;"""

#: statements that set every sequence to its value in the snapshot (printed by the source session into a
#: file psql runs whole; a name with a control character was refused before)
SEQUENCES_SQL = ("SELECT format('SELECT pg_catalog.setval(%L, %s, %s);', format('%I.%I', schemaname, sequencename), "
                 "coalesce(last_value, start_value), (last_value IS NOT NULL)::text) FROM pg_sequences "
                 "WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'bucardo') "
                 "AND schemaname !~ '[[:cntrl:]]' AND sequencename !~ '[[:cntrl:]]' ORDER BY 1;")
