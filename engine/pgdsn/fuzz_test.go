package pgdsn

import (
	"strings"
	"testing"
)

// DSNs come from flags, the environment and config files: a bad one is an
// error, never a panic; a parsed one survives a round trip, and its
// password never shows in the redacted form.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"postgres://user:s3cr%40t@db:5432/shop?sslmode=require",
		"host=db port=5432 user=backup password='it''s' dbname=odoo",
		"host=/var/run/postgresql dbname=x", "postgresql://[::1]:5433/db", "", "host='unterminated", "password=\\'x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(d.ConnString())
		if err != nil {
			t.Fatalf("%q -> %q does not parse: %v", s, d.ConnString(), err)
		}
		if again.ConnString() != d.ConnString() {
			t.Fatalf("round trip of %q: %q != %q", s, again.ConnString(), d.ConnString())
		}
		redacted := strings.Replace(d.Redacted(), "password=xxxxx", "", 1)
		if pw := d.Password(); len(pw) >= 6 && !strings.Contains(d.conninfo(false), pw) && strings.Contains(redacted, pw) {
			t.Fatalf("redacted %q shows the password", d.Redacted())
		}
	})
}
