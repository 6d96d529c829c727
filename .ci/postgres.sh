# Sourced by .ci/run: installs PostgreSQL from the Debian packages if needed, starts a throwaway server
# on 127.0.0.1:$PGPORT for the PostgreSQL-parametrised registry tests, exports BUTLER_TEST_POSTGRES_URL
# and stops the server when the calling script exits.  Locally, without that variable, those tests skip.
PGPORT=${PGPORT:-54329}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bindir)" ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "Installing PostgreSQL (Debian packages)..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PG_BIN=$(pg_bindir)
PG_DATA=$(mktemp -d /tmp/butler-ci-pg.XXXXXX)

as_pg_user() {  # initdb and postgres refuse to run as root
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$PG_DATA"
    su postgres -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}

as_pg_user "'$PG_BIN/initdb' -D '$PG_DATA/db' -A trust -U postgres" >/dev/null
as_pg_user "'$PG_BIN/pg_ctl' -D '$PG_DATA/db' -l '$PG_DATA/log' -w -o \"-p $PGPORT -k '$PG_DATA' -c listen_addresses=127.0.0.1 -c fsync=off\" start" >/dev/null
trap 'as_pg_user "'"'$PG_BIN/pg_ctl'"' -D '"'$PG_DATA/db'"' -m immediate stop" >/dev/null 2>&1; rm -rf "$PG_DATA"' EXIT
export BUTLER_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') running for the tests: $BUTLER_TEST_POSTGRES_URL"
