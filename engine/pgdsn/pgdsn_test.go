package pgdsn

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in       string
		conninfo string // without password
		db       string
	}{
		{"postgres://app:s3cr%40t@db.example:6432/odoo?sslmode=require&application_name=x",
			"application_name='x' dbname='odoo' host='db.example' port='6432' sslmode='require' user='app'", "odoo"},
		{"postgresql://h1:5432,h2:5433/shop", "dbname='shop' host='h1,h2' port='5432,5433'", "shop"},
		{"host=127.0.0.1 port=5432 user=postgres password='it\\'s \\\\q' dbname='my db'",
			"dbname='my db' host='127.0.0.1' port='5432' user='postgres'", "my db"},
		{"  dbname=retail  ", "dbname='retail'", "retail"},
	}
	for _, c := range cases {
		d, err := Parse(c.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.in, err)
		}
		got, _ := d.CommandArgs()
		if got != c.conninfo {
			t.Errorf("Parse(%q) conninfo = %s, want %s", c.in, got, c.conninfo)
		}
		if d.Database() != c.db {
			t.Errorf("Parse(%q) database = %q, want %q", c.in, d.Database(), c.db)
		}
	}
}

func TestPasswordStaysOutOfArgsAndMessages(t *testing.T) {
	d, err := Parse("postgres://app:Secr3t-pw@db/odoo")
	if err != nil {
		t.Fatal(err)
	}
	conninfo, env := d.CommandArgs()
	if strings.Contains(conninfo, "Secr3t-pw") || strings.Contains(d.Redacted(), "Secr3t-pw") {
		t.Fatalf("password in conninfo %q or redacted %q", conninfo, d.Redacted())
	}
	if env[len(env)-1] != "PGPASSWORD=Secr3t-pw" {
		t.Fatalf("password not handed over in PGPASSWORD: %v", env[len(env)-1])
	}
	if !strings.Contains(d.Redacted(), "password=xxxxx") {
		t.Fatalf("redacted DSN hides that a password was given: %q", d.Redacted())
	}
	if d.WithDatabase("postgres").Database() != "postgres" || d.Database() != "odoo" {
		t.Fatal("WithDatabase changed the original or did not switch")
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"host=x port=notaport", "hostonly", "host='unterminated", "password='it''s Secr3t-pw' host=x", "postgres://u:Secr3t-pw@h:99999999/db"} {
		_, err := Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) accepted a bad DSN", in)
			continue
		}
		if !strings.HasPrefix(err.Error(), "bad DSN") || strings.Contains(err.Error(), "Secr3t-pw") {
			t.Errorf("Parse(%q) error = %q", in, err)
		}
	}
}
