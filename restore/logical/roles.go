package logical

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drctl/drctl/engine/pgdsn"
)

// ErrRoles marks a restore refused before it started because the target's
// roles cannot take the backup's owners or grants.
var ErrRoles = errors.New("the target cannot take the backup's owners or grants")

// checkRoles refuses, before anything is restored, a restore that would
// fail on its first ALTER ... OWNER or GRANT: a role that is not a
// superuser cannot give objects to other roles, and no role can give them
// to, or grant to, roles the server does not have. The error names the
// option that makes the restore possible.
func checkRoles(ctx context.Context, target *pgdsn.DSN, p *plan, opt Options) error {
	owners := map[string]bool{}
	grantees := map[string]bool{}
	for i := range p.entries {
		e := &p.entries[i]
		if !p.restores(e) || never[e.Desc] {
			continue
		}
		if e.Owner != "" && !opt.NoOwner {
			owners[e.Owner] = true
		}
		if e.Desc == "ACL" && !opt.NoPrivileges {
			for _, r := range aclRoles(e.Defn) {
				grantees[r] = true
			}
		}
	}
	if len(owners)+len(grantees) == 0 && opt.Role == "" {
		return nil
	}
	conn, err := connectAnyDatabase(ctx, target)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var me string
	var super bool
	if err := conn.QueryRow(ctx, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&me, &super); err != nil {
		return fmt.Errorf("look up the target's role: %w", err)
	}
	if opt.Role != "" {
		err := conn.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", opt.Role).Scan(&super)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: --role %s: the target server has no such role", ErrRoles, opt.Role)
		}
		if err != nil {
			return fmt.Errorf("look up --role %s: %w", opt.Role, err)
		}
		me = opt.Role
	}
	names := make([]string, 0, len(owners)+len(grantees))
	for r := range owners {
		names = append(names, r)
	}
	for r := range grantees {
		if !owners[r] {
			names = append(names, r)
		}
	}
	// For each role: does it exist, and may the restoring role give
	// objects to it (be a member of it)?
	rows, err := conn.Query(ctx, `SELECT n, r.oid IS NOT NULL, r.oid IS NOT NULL AND pg_has_role($2, r.oid, 'MEMBER')
		FROM unnest($1::text[]) n LEFT JOIN pg_roles r ON r.rolname = n`, names, me)
	if err != nil {
		return fmt.Errorf("look up the backup's roles on the target: %w", err)
	}
	var missingOwners, foreignOwners, missingGrantees []string
	for rows.Next() {
		var name string
		var exists, member bool
		if err := rows.Scan(&name, &exists, &member); err != nil {
			return err
		}
		switch {
		case owners[name] && !exists:
			missingOwners = append(missingOwners, name)
		case owners[name] && !super && !member:
			foreignOwners = append(foreignOwners, name)
		}
		if grantees[name] && !exists {
			missingGrantees = append(missingGrantees, name)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	sort.Strings(missingOwners)
	sort.Strings(foreignOwners)
	sort.Strings(missingGrantees)
	var problems, fixes, otherwise []string
	if len(foreignOwners) > 0 {
		problems = append(problems, fmt.Sprintf("role %s is not a superuser and cannot give objects to their owners in the backup (%s)", me, strings.Join(foreignOwners, ", ")))
		otherwise = append(otherwise, "restore as a superuser")
	}
	if len(missingOwners) > 0 {
		problems = append(problems, fmt.Sprintf("the backup's objects belong to roles this server lacks (%s)", strings.Join(missingOwners, ", ")))
	}
	if len(foreignOwners)+len(missingOwners) > 0 {
		fixes = append(fixes, fmt.Sprintf("--no-owner (%s then owns what it restores)", me))
	}
	if len(missingGrantees) > 0 {
		problems = append(problems, fmt.Sprintf("the backup grants privileges to roles this server lacks (%s)", strings.Join(missingGrantees, ", ")))
		fixes = append(fixes, "--no-privileges (no GRANT or REVOKE is restored)")
	}
	if len(missingOwners)+len(missingGrantees) > 0 {
		otherwise = append(otherwise, "create the missing roles first")
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s; give %s, or %s; nothing was restored", ErrRoles, strings.Join(problems, "; "), strings.Join(fixes, " and "), strings.Join(otherwise, " and "))
}

// connectAnyDatabase connects to the target database, or to a maintenance
// database when it does not exist yet.
func connectAnyDatabase(ctx context.Context, target *pgdsn.DSN) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, target.ConnString())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" {
		return maintenanceConn(ctx, target)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %s", target.Redacted(), target.RedactError(err))
	}
	return conn, nil
}

// aclRoles returns the roles an ACL entry's statements name: grantees
// (GRANT ... TO), revokees (REVOKE ... FROM) and grantors (SET SESSION
// AUTHORIZATION), PUBLIC aside.
func aclRoles(defn string) []string {
	var out []string
	for _, stmt := range strings.Split(defn, ";\n") {
		toks := sqlTokens(strings.TrimSpace(stmt))
		if len(toks) == 0 {
			continue
		}
		switch strings.ToUpper(toks[0].text) {
		case "SET":
			// SET SESSION AUTHORIZATION role
			if len(toks) == 4 && strings.EqualFold(toks[1].text, "SESSION") && strings.EqualFold(toks[2].text, "AUTHORIZATION") {
				out = append(out, toks[3].text)
			}
		case "GRANT", "REVOKE":
			keyword := "TO"
			if strings.EqualFold(toks[0].text, "REVOKE") {
				keyword = "FROM"
			}
			at := -1
			for i, t := range toks {
				if !t.quoted && strings.EqualFold(t.text, keyword) {
					at = i
				}
			}
			if at < 0 {
				continue
			}
			for _, t := range toks[at+1:] {
				if !t.quoted && (strings.EqualFold(t.text, "WITH") || strings.EqualFold(t.text, "GRANTED") || strings.EqualFold(t.text, "CASCADE") || strings.EqualFold(t.text, "RESTRICT")) {
					break
				}
				if t.text == "," || (!t.quoted && (strings.EqualFold(t.text, "PUBLIC") || strings.EqualFold(t.text, "GROUP"))) {
					continue
				}
				out = append(out, t.text)
			}
		}
	}
	return out
}

type sqlToken struct {
	text   string
	quoted bool
}

// sqlTokens splits a statement into words, commas and parenthesised
// groups; a double-quoted identifier is one token, unquoted.
func sqlTokens(s string) []sqlToken {
	var out []sqlToken
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == ',':
			out = append(out, sqlToken{text: ","})
			i++
		case c == '(':
			depth := 0
			j := i
			for ; j < len(s); j++ {
				if s[j] == '(' {
					depth++
				} else if s[j] == ')' {
					depth--
					if depth == 0 {
						j++
						break
					}
				}
			}
			out = append(out, sqlToken{text: s[i:j]})
			i = j
		case c == '"':
			var b strings.Builder
			j := i + 1
			for j < len(s) {
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					j++
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, sqlToken{text: b.String(), quoted: true})
			i = j
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\r\n,(\"", rune(s[j])) {
				j++
			}
			out = append(out, sqlToken{text: s[i:j]})
			i = j
		}
	}
	return out
}
