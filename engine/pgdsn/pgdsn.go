// Package pgdsn parses PostgreSQL connection strings (URLs or key=value
// conninfo, as libpq accepts them) so that drctl can hand a connection to
// pg_dump/pg_restore without putting the password on a command line, and
// print it without leaking the password.
package pgdsn

import (
	"fmt"
	"maps"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DSN is a parsed connection string. Fields not given fall back, as in
// libpq, to the PG* environment variables and libpq defaults.
type DSN struct {
	params map[string]string
}

// Parse accepts "postgres://user:pw@host:port/db?sslmode=..." or
// "host=... port=... dbname=...". An empty string means "use the PG*
// environment variables only".
func Parse(s string) (*DSN, error) {
	s = strings.TrimSpace(s)
	var params map[string]string
	var err error
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		params, err = parseURL(s)
	} else {
		params, err = parseKeyValue(s)
	}
	if err != nil {
		return nil, fmt.Errorf("bad DSN: %w", err)
	}
	for k := range params {
		if !validKey(k) {
			return nil, fmt.Errorf("bad DSN: %q is not a connection parameter name", k)
		}
	}
	d := &DSN{params: params}
	if _, err := pgx.ParseConfig(d.conninfo(true)); err != nil {
		return nil, fmt.Errorf("bad DSN: %s", redactErr(err, params["password"]))
	}
	return d, nil
}

// RedactError returns err's message with the DSN's password masked.
func (d *DSN) RedactError(err error) string { return redactErr(err, d.params["password"]) }

func redactErr(err error, password string) string {
	msg := err.Error()
	// pgx quotes the whole connection string in backticks: drop it.
	if i := strings.IndexByte(msg, '`'); i >= 0 {
		if j := strings.IndexByte(msg[i+1:], '`'); j >= 0 {
			msg = msg[:i] + "connection string" + msg[i+1+j+1:]
		}
	}
	if password != "" {
		msg = strings.ReplaceAll(msg, password, "xxxxx")
	}
	return msg
}

func parseURL(s string) (map[string]string, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Parse echoes the input, password included.
		return nil, fmt.Errorf("malformed postgres URL")
	}
	p := map[string]string{}
	if u.User != nil {
		if name := u.User.Username(); name != "" {
			p["user"] = name
		}
		if pw, ok := u.User.Password(); ok {
			p["password"] = pw
		}
	}
	if u.Host != "" {
		var hosts, ports []string
		for _, hp := range strings.Split(u.Host, ",") {
			h, port := hp, ""
			if i := strings.LastIndexByte(hp, ':'); i >= 0 && !strings.HasSuffix(hp, "]") {
				h, port = hp[:i], hp[i+1:]
			}
			hosts = append(hosts, strings.Trim(h, "[]"))
			ports = append(ports, port)
		}
		p["host"] = strings.Join(hosts, ",")
		if strings.Join(ports, "") != "" {
			p["port"] = strings.Join(ports, ",")
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		p["dbname"] = db
	}
	for k, v := range u.Query() {
		if len(v) > 0 {
			p[k] = v[len(v)-1]
		}
	}
	return p, nil
}

func parseKeyValue(s string) (map[string]string, error) {
	p := map[string]string{}
	for len(s) > 0 {
		s = strings.TrimLeft(s, " \t\n\r")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("expected key=value at %q", firstWord(s))
		}
		key := strings.TrimSpace(s[:eq])
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			s = s[1:]
			closed := false
			for i := 0; i < len(s); i++ {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i++
					continue
				}
				if c == '\'' {
					s = s[i+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted value for %q", key)
			}
			if s != "" && s[0] != ' ' && s[0] != '\t' && s[0] != '\n' {
				return nil, fmt.Errorf("unexpected text after the quoted value of %q", key)
			}
		} else {
			i := 0
			for ; i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
			}
			s = s[i:]
		}
		p[key] = val.String()
	}
	return p, nil
}

// validKey: libpq's parameter names are lowercase words with underscores.
// Anything else could not be written back into a conninfo string safely.
func validKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i, c := range k {
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func firstWord(s string) string {
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		return s[:i]
	}
	return s
}

func quoteValue(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

func (d *DSN) conninfo(withPassword bool) string {
	keys := make([]string, 0, len(d.params))
	for k := range d.params {
		if k == "password" && !withPassword {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + quoteValue(d.params[k])
	}
	return strings.Join(parts, " ")
}

// ConnString returns the DSN with its password, for pgx only.
func (d *DSN) ConnString() string { return d.conninfo(true) }

// Redacted returns the DSN for messages and logs: the password is masked.
func (d *DSN) Redacted() string {
	s := d.conninfo(false)
	if _, ok := d.params["password"]; ok {
		if s != "" {
			s += " "
		}
		s += "password=xxxxx"
	}
	return s
}

// Password returns the password given in the DSN, if any.
func (d *DSN) Password() string { return d.params["password"] }

// Database returns the database name: from the DSN, PGDATABASE, or the
// user name, as libpq resolves it.
func (d *DSN) Database() string {
	cfg, err := pgx.ParseConfig(d.ConnString())
	if err != nil {
		return d.params["dbname"]
	}
	return cfg.Database
}

// ForServer returns a DSN that reaches the server at host (a socket
// directory or address) and port, logging in with login's user, password,
// database and passfile only: login's own host, port and service are
// dropped. defaultUser and defaultDB fill in what login lacks.
func ForServer(login *DSN, host string, port int, defaultUser, defaultDB string) (*DSN, error) {
	// A server in recovery is read-only: an inherited
	// PGTARGETSESSIONATTRS=read-write must not refuse it.
	p := map[string]string{"host": host, "port": strconv.Itoa(port), "sslmode": "disable", "target_session_attrs": "any"}
	if login != nil {
		for _, k := range []string{"user", "password", "dbname", "passfile", "application_name", "connect_timeout"} {
			if v, ok := login.params[k]; ok {
				p[k] = v
			}
		}
	}
	if p["user"] == "" && defaultUser != "" {
		p["user"] = defaultUser
	}
	if p["dbname"] == "" {
		p["dbname"] = defaultDB
	}
	d := &DSN{params: p}
	if _, err := pgx.ParseConfig(d.conninfo(true)); err != nil {
		return nil, fmt.Errorf("bad DSN: %s", redactErr(err, p["password"]))
	}
	return d, nil
}

// WithOptions returns a copy that sends options (the server settings of
// libpq's "options" parameter) at connection start.
func (d *DSN) WithOptions(options string) *DSN { return d.with("options", options) }

// WithDatabase returns a copy that connects to another database.
func (d *DSN) WithDatabase(name string) *DSN { return d.with("dbname", name) }

// with returns a copy with one parameter set.
func (d *DSN) with(key, value string) *DSN {
	p := maps.Clone(d.params)
	p[key] = value
	return &DSN{params: p}
}

// CommandArgs returns what a libpq program (pg_dump, pg_restore, psql) needs
// to make this connection: a conninfo for its --dbname option, without the
// password, and the environment with the password in PGPASSWORD, so that
// it never shows in a process listing.
func (d *DSN) CommandArgs() (conninfo string, env []string) {
	env = os.Environ()
	if pw, ok := d.params["password"]; ok {
		env = append(env, "PGPASSWORD="+pw)
	}
	return d.conninfo(false), env
}
