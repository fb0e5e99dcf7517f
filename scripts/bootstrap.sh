#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian 12 machine (as root): Debian packages,
# then a virtualenv with the project. Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(mariadb-server mariadb-client rsync openssh-client postfix dnsmasq-base libcrypt-cbc-perl
              libcrypt-blowfish-perl passwd procps bzip2 gzip python3-venv chromium
              debootstrap zstd iproute2)  # the last three: the lab servers (ispcp_lib/lab)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix must not ask questions, and no service may start during the install: the demo and
  # the tests run their own private MariaDB and Postfix instances.
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string sandbox.invalid" | debconf-set-selections
  policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy_created=1
  fi
  trap '[ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "bootstrap: installing the project into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[interactive,dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
