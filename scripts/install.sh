#!/usr/bin/env bash
# Install everything hcbpg, its lab and its tests need on a fresh Debian 12 / Ubuntu machine (as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev git ca-certificates openssl
  postgresql-15 postgresql-contrib pgbackrest openssh-server openssh-client sudo iproute2 util-linux
  pgcopydb prometheus-postgres-exporter chromium chromium-driver
  bucardo postgresql-plperl-15
  etcd-server etcd-client patroni iptables
  prometheus prometheus-alertmanager prometheus-node-exporter prometheus-blackbox-exporter
  ruby ruby-pg ruby-activerecord
)

if [ "$(id -u)" != 0 ]; then
  echo "scripts/install.sh: run as root (it installs packages and the lab needs network namespaces)" >&2
  exit 2
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-cache show postgresql-15 >/dev/null 2>&1; then
    # Ubuntu releases without PostgreSQL 15: add the PGDG repository with the key postgresql-common ships
    apt-get install -y -qq postgresql-common
    . /etc/os-release
    printf 'Types: deb\nURIs: https://apt.postgresql.org/pub/repos/apt\nSuites: %s-pgdg\nComponents: main\nSigned-By: /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc\n' \
      "$VERSION_CODENAME" > /etc/apt/sources.list.d/pgdg.sources
    apt-get update -qq
  fi
  # etcd, Patroni and the monitor (Prometheus, Alertmanager, the exporters) run only where hcbpg starts them
  # (the lab's hosts, step 10, the jumpbox): their packages' postinst would start a default daemon on this
  # machine, so they are installed with starting refused
  daemons=() others=()
  for p in "${missing[@]}"; do
    case "$p" in etcd-server|patroni|prometheus|prometheus-*-exporter|prometheus-alertmanager) daemons+=("$p") ;; *) others+=("$p") ;; esac
  done
  [ ${#others[@]} -eq 0 ] || apt-get install -y -qq -o Dpkg::Options::=--force-confold "${others[@]}"
  if [ ${#daemons[@]} -gt 0 ]; then
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get install -y -qq -o Dpkg::Options::=--force-confold "${daemons[@]}" || { [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
    if [ -d /run/systemd/system ]; then systemctl disable --now etcd patroni prometheus prometheus-alertmanager \
      prometheus-node-exporter prometheus-blackbox-exporter >/dev/null 2>&1 || true; fi
  fi
fi

# The lab installs postgresql-15 on some of its hosts the way a real server does, offline (its postinst runs and
# makes 15/main as createcluster.conf says: hcbpg.lab.hosts.unpackage_upper): from this machine's package lists
# and apt's cached .deb of the installed version, both kept here
pg_deb="/var/cache/apt/archives/postgresql-15_$(dpkg-query -W -f='${Version}_${Architecture}' postgresql-15 | sed 's/:/%3a/').deb"
if [ ! -f "$pg_deb" ] || ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install --download-only --reinstall -y -qq postgresql-15
fi

# Patroni 3.0.4 for the lab beside Debian 12's 3.0.2 (whose etcd3 code puts the leader key unconditionally once
# its lease is renewed: after a network cut healed, the cut leader took its leadership back over the member
# promoted meanwhile and no leader could run; fixed in 3.0.4 by a compare-and-put). Debian's package stays
# installed for its dependencies (psycopg2, urllib3, yaml, ...), which the venv sees; params/lab.yaml runs
# /opt/hcbpg-patroni/bin/patroni (replication.patroni.bin). Ubuntu 24.04's servers have 3.2.2, which has the fix.
PATRONI_LAB=3.0.4
if [ "$(/opt/hcbpg-patroni/bin/patroni --version 2>/dev/null)" != "patroni $PATRONI_LAB" ]; then
  rm -rf /opt/hcbpg-patroni && /usr/bin/python3 -m venv --system-site-packages /opt/hcbpg-patroni
  /opt/hcbpg-patroni/bin/pip install -q --no-deps "patroni==$PATRONI_LAB"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# hcbpg with its lab (moto, cheroot: the `lab` extra, which an operator's `pip install hcbpg` leaves out) and tests
if ! .venv/bin/python -c "import hcbpg, papermill, scrapbook, fabric, psycopg, hcloud, moto, cheroot, playwright, xdist, ruff, mypy, importlinter, grimp" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,lab]'
  touch .venv/.installed
fi
echo "hcbpg installed: $(.venv/bin/hcbpg --help >/dev/null && echo .venv/bin/hcbpg)"
