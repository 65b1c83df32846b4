#!/usr/bin/env bash
# Install Debian's prometheus-alertmanager (0.25 on Debian 12), the binary behind the local
# Alertmanager service (deploy/services/alertmanager.py), WITHOUT the package's own daemon:
# its postinst starts and enables a system service listening on 0.0.0.0:9093 with cluster gossip on
# 0.0.0.0:9094. trainmon runs its own instance on 127.0.0.1, so the system one is kept from starting
# (a deny-all policy-rc.d during the install) and disabled at boot. Idempotent: a no-op when installed.
set -euo pipefail

if command -v prometheus-alertmanager >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

policy=/usr/sbin/policy-rc.d
created=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# trainmon install: start no services\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  created=1
fi
cleanup() { if [ -n "$created" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

echo "installing prometheus-alertmanager (Debian package, its system service left off)..."
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager

# Never at boot either; and if an existing permissive policy-rc.d let it start, stop it now.
if command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable prometheus-alertmanager >/dev/null 2>&1 || true
else
  $sudo update-rc.d prometheus-alertmanager disable >/dev/null 2>&1 || true
fi
if [ -d /run/systemd/system ]; then
  $sudo systemctl stop prometheus-alertmanager || true
else
  $sudo /etc/init.d/prometheus-alertmanager stop >/dev/null 2>&1 || true
fi
prometheus-alertmanager --version 2>&1 | head -n 1
