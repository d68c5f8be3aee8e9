# Sourced by the other scripts: start this machine's PostgreSQL and Redis if they are down, and
# make the project's virtual environment with everything pyproject.toml asks for.

wait_for() {  # wait_for SECONDS COMMAND...: retry COMMAND until it succeeds or time runs out
  local seconds=$1; shift
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  "$@"
}

ensure_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_for 30 pg_isready -h 127.0.0.1 -p 5432 -q
  fi
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for 30 redis-cli -h 127.0.0.1 -p 6379 ping
  fi
}

ensure_venv() {
  local python
  python=$(command -v python3.11 || command -v python3)
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
}

# The operations and client checks: Prometheus's promtool for the alert rules (tests/ops), and
# the TypeScript producer package (clients/typescript), tested on its own and end to end by pytest.
ensure_promtool() {
  command -v promtool >/dev/null && return 0
  echo "installing promtool (Debian's prometheus package)"
  # The package would start a Prometheus server; policy-rc.d's 101 tells it not to.
  local guard="" log status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard"
  fi
  log=$(mktemp)
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1 || status=$?
  [ -z "$guard" ] || rm -f "$guard"
  [ "$status" -eq 0 ] || cat "$log" >&2
  rm -f "$log"
  return "$status"
}

test_typescript_client() {
  if ! command -v npm >/dev/null; then
    echo "clients/typescript needs Node.js 20.15 or later with npm" >&2
    return 1
  fi
  (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
}
