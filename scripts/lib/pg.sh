# A throwaway PostgreSQL cluster for benchmarks and demos (Debian's
# postgresql package), run as the postgres user on a free loopback port.
#   pg_up            starts one; sets PG_DIR, PG_PORT, PG_BIN
#   pg_createdb NAME creates a database and prints its URL
#   pg_down          stops it and removes its directory

pg_up() {
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$PG_BIN/initdb" ] || die "PostgreSQL is not installed (apt-get install postgresql)"
  PG_DIR=$(mktemp -d)
  chmod 755 "$PG_DIR"
  chown postgres "$PG_DIR"
  PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DIR/pg" --auth=trust -U postgres >/dev/null \
    || die "initdb failed"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/pg" -l "$PG_DIR/pg.log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
    || die "PostgreSQL did not start: $(tail -5 "$PG_DIR/pg.log")"
}

pg_createdb() {
  runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" "$1" || die "createdb $1 failed"
  echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"
}

pg_down() {
  [ -n "${PG_DIR:-}" ] || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=
}
