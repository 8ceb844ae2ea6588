package main_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/drctl/drctl/testrig"
)

// retail is an Odoo-like corner of a shop database: orders with an
// identity key, a foreign key to partners, an index, a trigger, a comment,
// a grant, an owned sequence, order lines pointing at orders, and a view.
const retail = `
CREATE SCHEMA sales;
CREATE TYPE sales.state AS ENUM ('draft', 'sale', 'done');
CREATE TABLE sales.partner (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE sales.sale_order (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  partner_id int NOT NULL REFERENCES sales.partner(id), state sales.state NOT NULL DEFAULT 'draft',
  amount numeric(12,2) CHECK (amount >= 0), note text);
CREATE INDEX sale_order_partner ON sales.sale_order (partner_id);
CREATE FUNCTION sales.stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.note := coalesce(NEW.note, 'stamped'); RETURN NEW; END$$;
CREATE TRIGGER sale_order_stamp BEFORE INSERT ON sales.sale_order FOR EACH ROW EXECUTE FUNCTION sales.stamp();
COMMENT ON TABLE sales.sale_order IS 'customer orders';
CREATE SEQUENCE sales.order_ref OWNED BY sales.sale_order.id;
CREATE TABLE sales.sale_order_line (id serial PRIMARY KEY, order_id bigint REFERENCES sales.sale_order(id) ON DELETE CASCADE, qty int);
CREATE VIEW sales.open_orders AS SELECT * FROM sales.sale_order WHERE state <> 'done';
INSERT INTO sales.partner (name) SELECT 'store ' || g FROM generate_series(1, 20) g;
INSERT INTO sales.sale_order (partner_id, amount, state) SELECT 1 + g % 20, g * 1.5, (ARRAY['draft','sale','done']::sales.state[])[1 + g % 3] FROM generate_series(1, 500) g;
INSERT INTO sales.sale_order_line (order_id, qty) SELECT 1 + g % 500, g FROM generate_series(1, 1500) g;
SELECT setval('sales.order_ref', 77);
CREATE ROLE auditor;
GRANT SELECT ON sales.sale_order TO auditor;
`

// copyOut is a table's rows as COPY prints them, ordered.
func copyOut(t *testing.T, dsn, table string) string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var b strings.Builder
	if _, err := conn.PgConn().CopyTo(context.Background(), &b, "COPY "+table+" TO STDOUT"); err != nil {
		t.Fatalf("copy %s: %v", table, err)
	}
	rows := strings.Split(b.String(), "\n")
	sort.Strings(rows)
	return strings.Join(rows, "\n")
}

// relations lists a database's own relations as "kind schema.name".
func relations(t *testing.T, pg *testrig.Postgres, db string) []string {
	t.Helper()
	conn := connect(t, pg.DSN(db))
	rows, err := conn.Query(context.Background(), `SELECT c.relkind::text || ' ' || n.nspname || '.' || c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestIncidentRestores: what on-call engineers do. A look inside a backup
// first; a restore as a role that is not a superuser, refused before
// anything is restored and then done with --no-owner --no-privileges; one
// table back into a side database with what belongs to it and nothing
// else; sections one after another.
func TestIncidentRestores(t *testing.T) {
	pg := testrig.StartPostgres(t)
	dir := t.TempDir()
	keys := testrig.NewKeys(t, dir)
	env := []string{"DRCTL_REPO=file://" + filepath.Join(dir, "repo"), "DRCTL_AGE_RECIPIENTS_FILE=" + keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE=" + keys.IdentityFile}
	pg.LoadAwkward(t, "shop", false)
	pg.Exec(t, "shop", retail)
	var b struct{ ID string }
	decodeJSON(t, mustRun(t, env, "backup", "--dsn", pg.DSN("shop"), "--json").stdout, &b)

	t.Run("show", func(t *testing.T) {
		r := mustRun(t, env, "show", "latest")
		for _, want := range []string{b.ID, "logical", "shop", "age, 1 recipient", "unsigned", "never (drctl verify"} {
			if !strings.Contains(r.stdout, want) {
				t.Fatalf("show lacks %q:\n%s", want, r.stdout)
			}
		}
		mustRun(t, env, "verify", b.ID)
		var shown struct {
			ID           string `json:"id"`
			Verification *struct {
				OK bool `json:"ok"`
			} `json:"verification"`
			Contents struct {
				Database string `json:"database"`
				Tables   []struct {
					Schema    string `json:"schema"`
					Name      string `json:"name"`
					DataBytes int64  `json:"data_bytes"`
				} `json:"tables"`
			} `json:"contents"`
		}
		decodeJSON(t, mustRun(t, env, "show", b.ID, "--contents", "--json").stdout, &shown)
		if shown.ID != b.ID || shown.Verification == nil || !shown.Verification.OK || shown.Contents.Database != "shop" {
			t.Fatalf("show --contents --json: %+v", shown)
		}
		// Every table of the database, each with the size of its data:
		// the rows as COPY prints them.
		want := map[string]bool{}
		for _, rel := range relations(t, pg, "shop") {
			kind, name, _ := strings.Cut(rel, " ")
			if kind == "r" || kind == "p" {
				want[name] = true
			}
		}
		for _, tb := range shown.Contents.Tables {
			name := tb.Schema + "." + tb.Name
			if !want[name] {
				t.Fatalf("show lists %s, which the database does not have", name)
			}
			delete(want, name)
			conn := connect(t, pg.DSN("shop"))
			var partitioned bool
			if err := conn.QueryRow(context.Background(), "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::regclass", pgx.Identifier{tb.Schema, tb.Name}.Sanitize()).Scan(&partitioned); err != nil {
				t.Fatal(err)
			}
			if partitioned {
				continue // its rows are its partitions'
			}
			rows := copyOut(t, pg.DSN("shop"), pgx.Identifier{tb.Schema, tb.Name}.Sanitize())
			if want := int64(len(rows)); tb.DataBytes != want {
				t.Errorf("%s: data_bytes %d, COPY gives %d", name, tb.DataBytes, want)
			}
		}
		if len(want) > 0 {
			t.Fatalf("show --contents misses tables %v", want)
		}
		if r := mustRun(t, env, "show", b.ID, "--contents"); !strings.Contains(r.stdout, "sale_order_stamp") || !strings.Contains(r.stdout, "FK CONSTRAINT") {
			t.Fatalf("show --contents:\n%s", r.stdout)
		}
	})

	t.Run("not-a-superuser", func(t *testing.T) {
		pg.Exec(t, "postgres", "CREATE ROLE shop_app LOGIN CREATEDB PASSWORD 'app-pw'")
		asApp := func(db string) string {
			return fmt.Sprintf("host=127.0.0.1 port=%d user=shop_app password=app-pw dbname=%s sslmode=disable", pg.Port, db)
		}
		r := mustFail(t, env, "--no-owner", "restore", "latest", "--into", asApp("app_copy"))
		if !strings.Contains(r.stderr, "not a superuser") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Fatalf("refusal is not one line naming the cause:\n%s", r.stderr)
		}
		if pg.DatabaseExists(t, "app_copy") {
			t.Fatal("the refused restore created the database")
		}
		// The option named is the one needed: with it alone the restore
		// goes through (the backup's grants name roles this server has).
		mustRun(t, env, "restore", "latest", "--into", asApp("app_owner_only"), "--no-owner")
		mustRun(t, env, "restore", "latest", "--into", asApp("app_copy"), "--no-owner", "--no-privileges")
		if got, want := pg.DumpPlain(t, "app_copy", "--no-owner", "--no-privileges"), pg.DumpPlain(t, "shop", "--no-owner", "--no-privileges"); got != want {
			t.Fatalf("restored as shop_app, the database differs: %s", testrig.FirstDiff(got, want))
		}
		if owner := pg.QueryInt(t, "app_copy", "SELECT count(*) FROM pg_tables WHERE schemaname = 'sales' AND tableowner <> 'shop_app'"); owner != 0 {
			t.Fatalf("%d tables not owned by the restoring role", owner)
		}
	})

	t.Run("one-table", func(t *testing.T) {
		r := mustRun(t, env, "restore", "latest", "--into", pg.DSN("side"), "--table", "sale_order")
		if !strings.Contains(r.stderr, "left out foreign key sale_order_partner_id_fkey") || !strings.Contains(r.stdout, "the rows of sales.sale_order in") {
			t.Fatalf("restore --table:\n%s", r.all())
		}
		got := strings.Join(relations(t, pg, "side"), "\n")
		want := strings.Join([]string{"S sales.order_ref", "S sales.sale_order_id_seq", "i sales.sale_order_partner", "i sales.sale_order_pkey", "r sales.sale_order"}, "\n")
		if got != want {
			t.Fatalf("--table sale_order restored\n%s\nwant\n%s", got, want)
		}
		if a, b := copyOut(t, pg.DSN("side"), "sales.sale_order"), copyOut(t, pg.DSN("shop"), "sales.sale_order"); a != b {
			t.Fatal("the restored table's rows differ")
		}
		for sql, want := range map[string]int64{
			"SELECT count(*) FROM pg_trigger WHERE tgname = 'sale_order_stamp'":                                1,
			"SELECT count(*) FROM pg_constraint WHERE conname LIKE 'sale_order_amount_check'":                  1,
			"SELECT last_value FROM sales.order_ref":                                                           77,
			"SELECT count(*) FROM pg_description WHERE description = 'customer orders'":                        1,
			"SELECT count(*) FROM pg_constraint WHERE contype = 'f'":                                           0,
			"SELECT (SELECT max(id) FROM sales.sale_order) - (SELECT last_value FROM sales.sale_order_id_seq)": 0,
		} {
			if got := pg.QueryInt(t, "side", sql); got != want {
				t.Errorf("%s = %d, want %d", sql, got, want)
			}
		}
		if n := pg.QueryInt(t, "side", "SELECT count(*) FROM sales.sale_order WHERE partner_id = 3"); n != 25 {
			t.Fatalf("the side database holds %d of partner 3's orders, want 25", n)
		}
		r = mustFail(t, env, "no table named", "restore", "latest", "--into", pg.DSN("side2"), "--table", "sale_orders")
		if !strings.Contains(r.stderr, "sales.sale_order") || pg.DatabaseExists(t, "side2") {
			t.Fatalf("an unknown table: %s (database created: %v)", r.stderr, pg.DatabaseExists(t, "side2"))
		}
		mustFail(t, env, "for a logical restore", "restore", "latest", "--to", filepath.Join(dir, "x"), "--table", "t")
		// Names as SQL writes them; mistakes are bad usage (exit 2), before
		// anything is created.
		mustRun(t, env, "restore", "latest", "--into", pg.DSN("quoted"), "--table", `"sales"."sale_order"`, "--table", "SALES.PARTNER")
		if n := pg.QueryInt(t, "quoted", "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"); n != 1 {
			t.Fatalf("sale_order and partner together: %d foreign keys, want 1", n)
		}
		for _, c := range []struct {
			want string
			args []string
		}{
			{"add --table sales.sale_order", []string{"--table", "sales.open_orders"}},
			{"leaves nothing to restore", []string{"--schema", "sales", "--exclude-schema", "sales"}},
			{"restore into a new database", []string{"--table", "sale_order", "--clean"}},
			{"--section", []string{"--section", "indexes"}},
		} {
			r := mustFail(t, env, c.want, append([]string{"restore", "latest", "--into", pg.DSN("refused")}, c.args...)...)
			if r.code != 2 || pg.DatabaseExists(t, "refused") {
				t.Fatalf("%v: exit %d (want 2), database created: %v", c.args, r.code, pg.DatabaseExists(t, "refused"))
			}
		}
		mustFail(t, env, "does not exist", "restore", "latest", "--into", pg.DSN("refused"), "--data-only")
		if pg.DatabaseExists(t, "refused") {
			t.Fatal("--data-only created a database")
		}
		// Leaving a table out names the foreign keys that go with it.
		var res struct {
			LeftOut []string `json:"left_out"`
		}
		decodeJSON(t, mustRun(t, env, "restore", "latest", "--into", pg.DSN("without_partner"), "--exclude-table", "sales.partner", "--json").stdout, &res)
		if len(res.LeftOut) != 1 || !strings.Contains(res.LeftOut[0], "sale_order_partner_id_fkey") {
			t.Fatalf("--exclude-table sales.partner: left_out %v", res.LeftOut)
		}
	})

	t.Run("sections", func(t *testing.T) {
		mustRun(t, env, "restore", "latest", "--into", pg.DSN("staged"), "--section", "pre-data", "--schema", "sales")
		if n := pg.QueryInt(t, "staged", "SELECT count(*) FROM sales.sale_order"); n != 0 {
			t.Fatalf("pre-data restored %d rows", n)
		}
		mustRun(t, env, "restore", "latest", "--into", pg.DSN("staged"), "--data-only", "--schema", "sales")
		mustRun(t, env, "restore", "latest", "--into", pg.DSN("staged"), "--section", "post-data", "--schema", "sales")
		if got, want := pg.DumpPlain(t, "staged", "--schema", "sales"), pg.DumpPlain(t, "shop", "--schema", "sales"); got != want {
			t.Fatalf("sections one after another differ from the source: %s", testrig.FirstDiff(got, want))
		}
	})
	t.Run("missing-grantee-and-extension", func(t *testing.T) {
		pg.Exec(t, "postgres", "CREATE DATABASE ghostly")
		pg.Exec(t, "postgres", "CREATE ROLE ghost")
		pg.Exec(t, "postgres", "CREATE ROLE ghost_app LOGIN CREATEDB PASSWORD 'ghost-pw'")
		pg.Exec(t, "ghostly", `CREATE EXTENSION dblink; CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO ghost;
			CREATE VIEW connections AS SELECT dblink_get_connections() AS names`)
		mustRun(t, env, "backup", "--dsn", pg.DSN("ghostly"))
		pg.Exec(t, "ghostly", "REVOKE ALL ON t FROM ghost")
		pg.Exec(t, "postgres", "DROP ROLE ghost")
		r := mustFail(t, env, "--no-privileges", "restore", "latest", "--database", "ghostly", "--into", pg.DSN("graft"))
		if !strings.Contains(r.stderr, "ghost") || strings.Contains(r.stderr, "--no-owner") {
			t.Fatalf("a superuser's restore with a missing grantee: %s", r.stderr)
		}
		if pg.DatabaseExists(t, "graft") {
			t.Fatal("the refused restore created the database")
		}
		mustRun(t, env, "restore", "latest", "--database", "ghostly", "--into", pg.DSN("graft"), "--no-privileges")
		if n := pg.QueryInt(t, "graft", "SELECT count(*) FROM t"); n != 1 {
			t.Fatalf("restored %d rows", n)
		}
		// dblink is not a trusted extension: a role that is not a superuser
		// is told to leave it out, and then restores the rest.
		asApp := fmt.Sprintf("host=127.0.0.1 port=%d user=ghost_app password=ghost-pw dbname=graft_app sslmode=disable", pg.Port)
		mustFail(t, env, "--exclude-extension dblink", "restore", "latest", "--database", "ghostly", "--into", asApp, "--no-owner", "--no-privileges")
		r = mustRun(t, env, "restore", "latest", "--database", "ghostly", "--into", asApp, "--no-owner", "--no-privileges", "--exclude-extension", "dblink")
		if got := relations(t, pg, "graft_app"); strings.Join(got, ",") != "r public.t" {
			t.Fatalf("without dblink, restored %v (the view on it must go too)", got)
		}
		// --role: the database is created for that role, which owns what
		// is restored.
		pg.Exec(t, "postgres", "CREATE ROLE ghost_owner NOLOGIN; GRANT ghost_owner TO ghost_app")
		mustRun(t, env, "restore", "latest", "--database", "ghostly", "--into", strings.Replace(asApp, "graft_app", "graft_role", 1), "--role", "ghost_owner", "--no-owner", "--no-privileges", "--exclude-extension", "dblink")
		if n := pg.QueryInt(t, "graft_role", "SELECT count(*) FROM pg_tables WHERE tablename = 't' AND tableowner = 'ghost_owner'"); n != 1 {
			t.Fatal("--role ghost_owner: the table is not that role's")
		}
		if n := pg.QueryInt(t, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'graft_role' AND pg_get_userbyid(datdba) = 'ghost_owner'"); n != 1 {
			t.Fatal("--role ghost_owner: the database was not created for that role")
		}
		mustFail(t, env, "not a member", "restore", "latest", "--database", "ghostly", "--into", strings.Replace(asApp, "graft_app", "graft_x", 1), "--role", "shop_app", "--no-owner")
	})
}
