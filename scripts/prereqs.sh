#!/usr/bin/env bash
# What `make demo`, `make test` and CI need from the machine, made ready or refused at once.
#
#   scripts/prereqs.sh demo   Python >= 3.11 (with venv), RabbitMQ on 127.0.0.1:5672
#   scripts/prereqs.sh test   … and PostgreSQL on 127.0.0.1:5432, Debian's prometheus package
#                             (promtool, prometheus), RabbitMQ's rabbitmq_prometheus plugin
#
# As root on Debian/Ubuntu it installs, starts or enables what is missing; otherwise it stops
# at the first missing piece with the one command that would fix it (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."

need="${1:-test}"
PYTHON="${PYTHON:-python3}"

say() { echo "prereqs: $*" >&2; }
can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
# Stop with the command that fixes it (prefixed with sudo when not root).
refuse() {  # what, command
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo "
  say "$1; run:"; echo "  ${sudo}$2" >&2; exit 1
}
apt_install() {  # package...
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { apt-get update >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; }
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # name port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$2"; do
    if (( SECONDS > deadline )); then say "$1 did not come up on port $2"; exit 1; fi
    sleep 1
  done
}

# Python >= 3.11, and its venv module (Debian ships it apart, as python3-venv).
if ! command -v "$PYTHON" >/dev/null \
  || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  refuse "govnotify needs Python >= 3.11 (PYTHON=$PYTHON)" "apt-get install -y python3 python3-venv"
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  if can_install; then apt_install python3-venv; else
    refuse "Python's venv module is missing" "apt-get install -y python3-venv"; fi
fi

# RabbitMQ: installed, then running (both commands need it).
if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null; then
    if can_install; then apt_install rabbitmq-server; else
      refuse "RabbitMQ is not installed" "apt-get install -y rabbitmq-server"; fi
  fi
  if [ "$(id -u)" = 0 ]; then
    say "starting RabbitMQ"
    rabbitmq-server -detached
    wait_port RabbitMQ 5672 90
  else
    refuse "RabbitMQ is not running on 127.0.0.1:5672" "rabbitmq-server -detached"
  fi
fi

[ "$need" = demo ] && exit 0

# PostgreSQL (the tests create a database each, trust authentication on loopback).
if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    if can_install; then apt_install postgresql; else
      refuse "PostgreSQL is not installed" "apt-get install -y postgresql"; fi
  fi
  cluster="$(ls /etc/postgresql 2>/dev/null | head -n1)"
  if [ "$(id -u)" = 0 ] && [ -n "$cluster" ]; then
    say "starting PostgreSQL $cluster"
    pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
    wait_port PostgreSQL 5432 60
  else
    refuse "PostgreSQL is not running on 127.0.0.1:5432" \
      "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | head -n1) main start"
  fi
fi

# The alert-rule tests run Debian's real Prometheus and promtool. The package also starts its
# own server on :9090; the tests start theirs on free ports and need nothing of it.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if can_install; then apt_install prometheus; else
    refuse "promtool and prometheus are missing" \
      "apt-get install -y --no-install-recommends prometheus"; fi
fi

# RabbitMQ's own metrics (queue depth, unacked, consumers) for the live Prometheus test: the
# plugin listens on 15692 once enabled.
if ! port_open 15692; then
  if [ "$(id -u)" = 0 ] && command -v rabbitmq-plugins >/dev/null; then
    say "enabling rabbitmq_prometheus"
    rabbitmq-plugins enable --quiet rabbitmq_prometheus >/dev/null
    wait_port rabbitmq_prometheus 15692 30
  else
    refuse "RabbitMQ's rabbitmq_prometheus plugin is not enabled" \
      "rabbitmq-plugins enable rabbitmq_prometheus"
  fi
fi
