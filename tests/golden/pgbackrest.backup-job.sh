#!/bin/sh
# Managed by hcbpg: do not edit by hand; hcbpg rewrites this file whole on its next run.
# Scheduled pgBackRest backup of stanza hcb_production (cron: /etc/cron.d/hcbpg-backup), then a ping to the
# dead-man's switch: URL/start before, URL on success, URL/fail?status=N on failure.
# The outside service alerts when the pings stop: a failed backup, a stopped cron, a server
# that is down.  Run by hand as postgres:  sudo -u postgres /usr/local/sbin/hcbpg-backup diff [repository]
set -u
STANZA=hcb_production
PING_URL=http://10.0.1.1:8781/ping/hcbpg-backup-lab
LOG=/var/log/pgbackrest/hcbpg-backup.log

type="${1:-}"
repo="${2:-1}"
case "$type" in
  full|diff|incr) ;;
  *) echo "usage: $0 full|diff|incr [1]" >&2; exit 64 ;;
esac
case "$repo" in
  1) ;;
  *) echo "usage: $0 full|diff|incr [1]: no repository $repo" >&2; exit 64 ;;
esac
if [ "$(id -un)" != postgres ]; then
  echo "$0: run this as postgres (sudo -u postgres $0 $type $repo)" >&2
  exit 77
fi
# one backup at a time (pgBackRest's backup lock is one per stanza): wait for the one running
exec 9>>"$LOG.lock"
if ! flock -w 43200 9; then
  echo "$0: another backup held the lock for 12 hours; no backup" >&2
  exit 75
fi
# installed on every server: only the primary backs up (after a failover, the new one)
if ! in_recovery=$(psql -X -A -t -q -p 5432 -d postgres -c 'SELECT pg_is_in_recovery()' 2>&1); then
  # PostgreSQL down: no ping (a standby's failure must not mark the cluster's backup failed;
  # a primary that is down sends no success ping, which is the alert)
  echo "$0: PostgreSQL does not answer ($in_recovery); no backup" >&2
  echo "$(date -u +%FT%TZ) $type skipped: PostgreSQL does not answer" >>"$LOG" 2>/dev/null
  exit 75
fi
if [ "$in_recovery" = t ]; then
  echo "$0: this server is a standby; backups run on the primary"
  echo "$(date -u +%FT%TZ) $type skipped: standby" >>"$LOG" 2>/dev/null
  exit 0
fi

send_ping() {
  # $1: URL; stdin: the body (the tail of pgBackRest's output)
  [ -n "$PING_URL" ] || return 0
  curl -fsS -m 10 --retry 5 --retry-delay 2 --retry-connrefused -o /dev/null --data-binary @- "$1"
}

out=$(mktemp) || exit 75
trap 'rm -f "$out"' EXIT
echo "hcbpg-backup $type repo$repo starting" | send_ping "$PING_URL/start" || echo "$0: start ping failed" >&2
pgbackrest --stanza="$STANZA" --repo="$repo" --type="$type" --log-level-console=info backup >"$out" 2>&1
status=$?
cat "$out"
{ echo "$(date -u +%FT%TZ) $type repo$repo exit $status"; tail -n 5 "$out"; } >>"$LOG" 2>/dev/null
if [ "$status" -eq 0 ]; then
  tail -n 20 "$out" | send_ping "$PING_URL" || echo "$0: success ping failed" >&2
else
  tail -n 20 "$out" | send_ping "$PING_URL/fail?status=$status" || echo "$0: failure ping failed" >&2
fi
exit "$status"
