#!/usr/bin/env bash
# make demo: a throw-away PostgreSQL cluster with a small retail schema,
# backed up to a file:// repository, verified, restored into a scratch
# database and compared. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
drctl="$root/bin/drctl"

bindir=""
for d in "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then bindir=$d; break; fi
done
[ -n "$bindir" ] || { echo "demo: PostgreSQL server programs not found (run make deps)" >&2; exit 1; }

work=$(mktemp -d /tmp/drctl-demo-XXXXXX)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
pgdata="$work/data"
pitrdata="$work/pitr"
cleanup() {
  for d in "$pitrdata" "$pgdata"; do
    if [ -f "$d/postmaster.pid" ]; then
      "${as_pg[@]}" "$bindir/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  local p=$1
  while (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; do p=$((p + 1)); [ $p -lt $(($1 + 100)) ] || { echo "demo: no free port" >&2; exit 1; }; done
  echo $p
}
port=$(free_port 55432)

# The repository, and what archive_command (run by the server's user) needs.
mkdir -p demo-work
rm -rf demo-work/repo demo-work/key.txt demo-work/recipients.txt demo-work/archive.yaml demo-work/signing-key* demo-work/allowed_signers demo-work/drctl.yaml demo-work/objectives.html
mkdir -p demo-work/repo/wal demo-work/repo/.drctl-tmp
[ "$(id -u)" != 0 ] || chown postgres: demo-work/repo demo-work/repo/wal demo-work/repo/.drctl-tmp
age-keygen -o demo-work/key.txt 2>/dev/null
age-keygen -y demo-work/key.txt > demo-work/recipients.txt
# Backups and WAL are signed (an Ed25519 OpenSSH key); readers accept only
# what an allowed signer signed.
ssh-keygen -q -t ed25519 -N '' -C demo-backup-host -f demo-work/signing-key
[ "$(id -u)" != 0 ] || chown postgres: demo-work/signing-key
printf 'backup@demo %s\n' "$(cat demo-work/signing-key.pub)" > demo-work/allowed_signers
printf 'repo: file://%s/demo-work/repo\nrecipients_file: %s/demo-work/recipients.txt\nsigning_key_file: %s/demo-work/signing-key\n' "$root" "$root" "$root" > demo-work/archive.yaml
chmod 644 demo-work/recipients.txt demo-work/archive.yaml demo-work/allowed_signers

step() { printf '\n== %s\n' "$*"; }

step "start a throw-away PostgreSQL cluster on 127.0.0.1:$port"
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$password" > "$work/pw"; [ "$(id -u)" != 0 ] || chown postgres: "$work/pw"
"${as_pg[@]}" "$bindir/initdb" -D "$pgdata" -U postgres --pwfile="$work/pw" --auth=scram-sha-256 -E UTF8 --locale=C --no-sync >/dev/null
rm -f "$work/pw"
"${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdata" -l "$work/postgres.log" -w \
  -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c archive_mode=on -c wal_level=replica" \
  -o "-c archive_command='$drctl --config $root/demo-work/archive.yaml wal-push %p'" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGPASSWORD=$password PGSSLMODE=disable

step "load the retail sample schema (products, stock moves, orders, payments)"
"$bindir/psql" -q -d postgres -c "CREATE DATABASE retail"
"$bindir/psql" -q -d retail -v ON_ERROR_STOP=1 -f testdata/sql/retail.sql
"$bindir/psql" -d retail -Atc "SELECT format('%s products, %s stock moves, %s orders, %s payments',
  (SELECT count(*) FROM products), (SELECT count(*) FROM stock_moves), (SELECT count(*) FROM orders), (SELECT count(*) FROM payments))"

step "an age key pair was generated: the backup host needs only the public half"
cat demo-work/recipients.txt
step "and a signing key: what it signs, readers with demo-work/allowed_signers accept"
cat demo-work/allowed_signers

export DRCTL_REPO="file://$root/demo-work/repo"
export DRCTL_AGE_RECIPIENTS_FILE="$root/demo-work/recipients.txt"
export DRCTL_AGE_IDENTITY_FILE="$root/demo-work/key.txt"
export DRCTL_SIGNING_KEY_FILE="$root/demo-work/signing-key"
export DRCTL_ALLOWED_SIGNERS_FILE="$root/demo-work/allowed_signers"
unset PGDATABASE

step "drctl backup (repository $DRCTL_REPO)"
"$drctl" backup --dsn "dbname=retail" --label process=sales --label release=demo-1

step "drctl list"
"$drctl" list

step "drctl verify latest"
"$drctl" verify latest

step "drctl show latest --contents (what the backup holds, before restoring anything)"
"$drctl" show latest --contents | sed -n '1,3p;/^contents/,$p' | head -24

step "drctl restore latest --table orders --into dbname=retail_incident (one table, into a side database)"
"$drctl" restore latest --table orders --into "dbname=retail_incident"
[ "$("$bindir/psql" -d retail_incident -Atc "SELECT (SELECT count(*) FROM orders) = $("$bindir/psql" -d retail -Atc 'SELECT count(*) FROM orders') AND to_regclass('payments') IS NULL")" = t ] ||
  { echo "demo: the one-table restore did not bring back exactly the orders" >&2; exit 1; }

step "drctl restore latest --into dbname=retail_restored"
"$drctl" restore latest --into "dbname=retail_restored"

step "compare the restored database with the original"
dump() { "$bindir/pg_dump" -d "$1" | grep -v -e '^\\restrict ' -e '^\\unrestrict '; }
if cmp -s <(dump retail) <(dump retail_restored); then
  "$bindir/psql" -d retail_restored -Atc "SELECT format('identical: %s orders totalling %s, %s payments',
    (SELECT count(*) FROM orders), (SELECT sum(total) FROM orders), (SELECT count(*) FROM payments))"
else
  echo "demo: the restored database differs from the original" >&2
  exit 1
fi

step "physical: drctl basebackup (WAL is archived by archive_command = 'drctl wal-push %p')"
"$drctl" basebackup --dsn "dbname=postgres" --label process=stores

step "a sale, then a mistake: both committed after the base backup"
"$bindir/psql" -q -d retail -c "INSERT INTO orders (store, ordered_at, total) VALUES ('store-demo', now(), 42.00)"
sleep 1
before_mistake=$("$bindir/psql" -d retail -Atc "SELECT now()")
sleep 1
"$bindir/psql" -q -d retail -c "DELETE FROM payments WHERE method = 'voucher'"
"$bindir/psql" -d retail -Atc "SELECT format('now: %s payments, demo sale present: %s', (SELECT count(*) FROM payments), EXISTS (SELECT 1 FROM orders WHERE store = 'store-demo'))"
seg=$("$bindir/psql" -d postgres -Atc "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 100); do
  [ "$("$bindir/psql" -d postgres -Atc "SELECT coalesce(last_archived_wal, '') >= '$seg' FROM pg_stat_archiver")" = t ] && break
  sleep 0.1
done

step "drctl verify latest (every file against backup_manifest, and WAL continuity)"
"$drctl" verify latest

pitrport=$(free_port $((port + 1)))
step "drctl restore latest --to DIR --target-time '$before_mistake' --start (port $pitrport)"
"$drctl" restore latest --to "$pitrdata" --target-time "$before_mistake" --start \
  --start-option port=$pitrport --start-option listen_addresses=127.0.0.1 \
  --start-option unix_socket_directories=$work --start-option archive_mode=off \
  --dsn "host=127.0.0.1 port=$pitrport dbname=postgres"
"$bindir/psql" -p "$pitrport" -d retail -Atc "SELECT format('restored: %s payments, demo sale present: %s', (SELECT count(*) FROM payments), EXISTS (SELECT 1 FROM orders WHERE store = 'store-demo'))"
ok=$("$bindir/psql" -p "$pitrport" -d retail -Atc "SELECT (SELECT count(*) FROM payments) = 20000 AND EXISTS (SELECT 1 FROM orders WHERE store = 'store-demo')")
[ "$ok" = t ] || { echo "demo: point-in-time restore did not land between the sale and the mistake" >&2; exit 1; }

step "recovery objectives: two business processes (demo-work/drctl.yaml)"
cat > demo-work/drctl.yaml <<'YAML'
processes:
  - name: sales
    description: Sales (nightly dumps)
    database: retail
    mode: logical
    rpo: 1h
    rto: 10m
    checks:
      - {name: orders present, sql: "SELECT count(*) FROM orders", expect: ">= 1000"}
      - {name: no negative totals, sql: "SELECT id, total FROM orders WHERE total < 0", expect: none}
  - name: stores
    description: Store operations (base backup + WAL)
    database: retail
    mode: pitr
    rpo: 1h
    rto: 10m
    checks:
      - {name: payments present, sql: "SELECT count(*) FROM payments", expect: some}
YAML
cat demo-work/drctl.yaml
export DRCTL_CONFIG="$root/demo-work/drctl.yaml"
"$drctl" policy lint

step "drctl verify latest --kind logical, then drctl policy check (no drill yet: exit 4)"
"$drctl" verify "$("$drctl" list --json --kind logical | grep -o '"id": "[^"]*"' | tail -1 | cut -d'"' -f4)" >/dev/null
if "$drctl" policy check; then echo "demo: the objectives hold without any drill" >&2; exit 1; fi

step "drctl drill --process sales (a throw-away cluster: restore, checks, timed)"
"$drctl" drill --process sales

step "drctl drill --process stores (the base backup replayed to the end of the archive)"
"$drctl" drill --process stores

step "drctl gate --process sales --process stores --release demo-2 --backup-now (the pre-deploy check)"
"$drctl" gate --process sales --process stores --release demo-2 --backup-now

step "drctl report --html demo-work/objectives.html"
"$drctl" report --html demo-work/objectives.html --since 1d

step "drctl list"
"$drctl" list

step "done: the repository stays in demo-work/repo, the clusters are stopped and removed"
find demo-work/repo -type f -not -path '*/.drctl-tmp/*' | sort
