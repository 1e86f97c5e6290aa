#!/usr/bin/env bash
# Installs the Debian packages the project runs on, when the machine lacks them:
# Java and Maven (the Kafka broker jars), Redis, PostgreSQL, docker-compose (to validate
# the compose file), Python's venv module, and Chromium with its driver (the console's
# browser tests). Does nothing when all are present.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need java openjdk-17-jre-headless
need mvn maven
need redis-server redis-server
need docker-compose docker-compose
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
need chromium chromium
need chromedriver chromium-driver
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged servers on install; the project runs its own on its own ports.
for unit in redis-server postgresql; do
  $SUDO service "$unit" stop >/dev/null 2>&1 || true
done
