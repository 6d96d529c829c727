# Sourced by .ci/run: installs PostgreSQL from the Debian packages if needed, starts a throwaway server
# on 127.0.0.1:$PGPORT for the PostgreSQL-parametrised registry tests, exports BUTLER_TEST_POSTGRES_URL
# and stops the server when the calling script exits.  Without that variable those tests skip; if the
# server cannot be installed or started this says so loudly and the tests run on SQLite only.
PGPORT=${PGPORT:-54329}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_pg_user() {  # initdb and postgres refuse to run as root
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$PG_DATA"
    su postgres -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}

start_postgres() {
  if [ -z "$(pg_bindir)" ]; then
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "Installing PostgreSQL (Debian packages)..."
    $sudo apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null || return 1
  fi
  PG_BIN=$(pg_bindir)
  [ -n "$PG_BIN" ] || return 1
  PG_DATA=$(mktemp -d /tmp/butler-ci-pg.XXXXXX)
  as_pg_user "'$PG_BIN/initdb' -D '$PG_DATA/db' -A trust -U postgres" >/dev/null || return 1
  as_pg_user "'$PG_BIN/pg_ctl' -D '$PG_DATA/db' -l '$PG_DATA/log' -w -o \"-p $PGPORT -k '$PG_DATA' -c listen_addresses=127.0.0.1 -c fsync=off\" start" >/dev/null || return 1
  trap 'as_pg_user "'"'$PG_BIN/pg_ctl'"' -D '"'$PG_DATA/db'"' -m immediate stop" >/dev/null 2>&1; rm -rf "$PG_DATA"' EXIT
  export BUTLER_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
  echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') running for the tests: $BUTLER_TEST_POSTGRES_URL"
}

if ! start_postgres; then
  echo "WARNING: could not install or start PostgreSQL; the PostgreSQL-parametrised tests will be SKIPPED." >&2
fi
