package logical

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drctl/drctl/engine/pgarchive"
	"github.com/drctl/drctl/engine/pgdsn"
)

// ErrRoles marks a restore refused before it started because the target's
// roles cannot take the backup's owners or grants.
var ErrRoles = errors.New("the target cannot take the backup's owners or grants")

// checkRoles refuses, before anything is restored, a restore that would
// fail on its first ALTER ... OWNER, GRANT or CREATE: a role that is not a
// superuser cannot give objects to other roles, grant as another role,
// create untrusted extensions, disable triggers, or create in a database or
// schema it may not create in; no role can give objects to, or grant to,
// roles the server does not have. The error names the option that makes
// the restore possible.
func checkRoles(ctx context.Context, target *pgdsn.DSN, p *plan, opt Options) error {
	owners := map[string]bool{}
	grantees := map[string]bool{}
	var extensions []string
	grantsAsOthers, schemas, inPublic := false, false, false
	for i := range p.entries {
		e := &p.entries[i]
		if !p.restores(e) || never[e.Desc] || !p.inSections(e) {
			continue
		}
		if e.Owner != "" && !opt.NoOwner && e.Section != pgarchive.SectionData {
			owners[e.Owner] = true // data is loaded, not owned
		}
		if (e.Desc == "ACL" || e.Desc == "DEFAULT ACL") && !opt.NoPrivileges {
			for _, r := range aclRoles(e.Defn) {
				grantees[r] = true
			}
			grantsAsOthers = grantsAsOthers || strings.Contains(e.Defn, "SET SESSION AUTHORIZATION")
		}
		switch {
		case e.Desc == "EXTENSION":
			extensions = append(extensions, e.Tag)
		case e.Desc == "SCHEMA":
			schemas = true
		case e.Namespace == "public" && e.Section == pgarchive.SectionPreData:
			inPublic = true
		}
	}
	conn, existing, err := connectAnyDatabase(ctx, target)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var login string
	var super bool
	if err := conn.QueryRow(ctx, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&login, &super); err != nil {
		return fmt.Errorf("look up the target's role: %w", err)
	}
	me, loginSuper := login, super
	if opt.Role != "" {
		var roleSuper, member bool
		err := conn.QueryRow(ctx, "SELECT rolsuper, pg_has_role($2, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1", opt.Role, login).Scan(&roleSuper, &member)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: --role %s: the target server has no such role", ErrRoles, opt.Role)
		}
		if err != nil {
			return fmt.Errorf("look up --role %s: %w", opt.Role, err)
		}
		if !super && !member {
			return fmt.Errorf("%w: --role %s: %s is not a member of %s, so it cannot SET ROLE to it; nothing was restored", ErrRoles, opt.Role, login, opt.Role)
		}
		// pg_restore works as the role (SET ROLE): its rights count.
		me, super = opt.Role, roleSuper
	}
	var problems, fixes, otherwise []string
	// Grants made by other roles are restored with SET SESSION
	// AUTHORIZATION, which the login itself must be a superuser for.
	if grantsAsOthers && !loginSuper {
		problems = append(problems, fmt.Sprintf("the backup has grants made by other roles, which only a superuser login can restore (%s is not one)", login))
		fixes = append(fixes, "--no-privileges")
	}
	if !super {
		if opt.DisableTriggers {
			problems = append(problems, fmt.Sprintf("--disable-triggers needs a superuser, and %s is not one", me))
			fixes = append(fixes, "no --disable-triggers")
		}
		if len(extensions) > 0 {
			untrusted, err := untrustedExtensions(ctx, conn, extensions, existing)
			if err != nil {
				return err
			}
			if len(untrusted) > 0 {
				problems = append(problems, fmt.Sprintf("the backup creates extensions that only a superuser can create (%s)", strings.Join(untrusted, ", ")))
				fixes = append(fixes, "--exclude-extension "+strings.Join(untrusted, " --exclude-extension ")+" (what uses them is left out too)")
			}
		}
		if existing {
			var createDB, createPublic bool
			var dbOwner string
			if err := conn.QueryRow(ctx, `SELECT has_database_privilege($1, current_database(), 'CREATE'),
				coalesce((SELECT has_schema_privilege($1, 'public', 'CREATE') FROM pg_namespace WHERE nspname = 'public'), true),
				pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()`, me).Scan(&createDB, &createPublic, &dbOwner); err != nil {
				return fmt.Errorf("look up %s's privileges on the target: %w", me, err)
			}
			if schemas && !createDB {
				problems = append(problems, fmt.Sprintf("%s may not create schemas in database %s (it belongs to %s)", me, target.Database(), dbOwner))
			}
			if inPublic && !createPublic {
				problems = append(problems, fmt.Sprintf("%s may not create in schema public of database %s (it belongs to %s)", me, target.Database(), dbOwner))
			}
			if (schemas && !createDB) || (inPublic && !createPublic) {
				otherwise = append(otherwise, "restore into a new database (drctl creates it, owned by the restoring role)")
			}
		}
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
	if len(foreignOwners) > 0 {
		problems = append(problems, fmt.Sprintf("role %s is not a superuser and cannot give objects to their owners in the backup (%s)", me, strings.Join(foreignOwners, ", ")))
	}
	if len(missingOwners) > 0 {
		problems = append(problems, fmt.Sprintf("the backup's objects belong to roles this server lacks (%s)", strings.Join(missingOwners, ", ")))
	}
	if len(foreignOwners)+len(missingOwners) > 0 {
		fixes = append(fixes, fmt.Sprintf("--no-owner (%s then owns what it restores)", me))
	}
	if len(missingGrantees) > 0 {
		problems = append(problems, fmt.Sprintf("the backup grants privileges to roles this server lacks (%s)", strings.Join(missingGrantees, ", ")))
		if !slices.Contains(fixes, "--no-privileges") {
			fixes = append(fixes, "--no-privileges")
		}
	}
	if len(problems) == 0 {
		return nil
	}
	var ways []string
	if len(fixes) > 0 {
		ways = append(ways, "give "+strings.Join(fixes, " and "))
	}
	ways = append(ways, otherwise...)
	if len(missingOwners)+len(missingGrantees) > 0 {
		ways = append(ways, "create the missing roles first")
	}
	if !super {
		ways = append(ways, "restore as a superuser")
	}
	return fmt.Errorf("%w: %s; %s; nothing was restored", ErrRoles, strings.Join(problems, "; "), strings.Join(ways, ", or "))
}

// untrustedExtensions returns the extensions of names that a role that is
// not a superuser cannot create here: not trusted, and not already in the
// target database.
func untrustedExtensions(ctx context.Context, conn *pgx.Conn, names []string, existing bool) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT n FROM unnest($1::text[]) n
		WHERE NOT EXISTS (SELECT 1 FROM pg_available_extension_versions v WHERE v.name = n AND v.trusted)
		AND NOT ($2 AND EXISTS (SELECT 1 FROM pg_extension WHERE extname = n))
		ORDER BY n`, names, existing)
	if err != nil {
		return nil, fmt.Errorf("look up the backup's extensions on the target: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// connectAnyDatabase connects to the target database (existing), or to a
// maintenance database when it does not exist yet.
func connectAnyDatabase(ctx context.Context, target *pgdsn.DSN) (*pgx.Conn, bool, error) {
	conn, err := pgx.Connect(ctx, target.ConnString())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" {
		conn, err := maintenanceConn(ctx, target)
		return conn, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("connect to %s: %s", target.Redacted(), target.RedactError(err))
	}
	return conn, true, nil
}

// aclRoles returns the roles an ACL entry's statements name: grantees
// (GRANT ... TO), revokees (REVOKE ... FROM), grantors (SET SESSION
// AUTHORIZATION) and the roles of ALTER DEFAULT PRIVILEGES FOR ROLE,
// PUBLIC aside.
func aclRoles(defn string) []string {
	var out []string
	for _, stmt := range strings.Split(defn, ";\n") {
		toks := sqlTokens(strings.TrimSpace(stmt))
		if len(toks) == 0 {
			continue
		}
		word := func(i int, w string) bool {
			return i < len(toks) && !toks[i].quoted && strings.EqualFold(toks[i].text, w)
		}
		if word(0, "SET") && word(1, "SESSION") && word(2, "AUTHORIZATION") && len(toks) == 4 {
			out = append(out, toks[3].text)
			continue
		}
		if word(0, "ALTER") && word(1, "DEFAULT") && word(2, "PRIVILEGES") {
			// ALTER DEFAULT PRIVILEGES [FOR ROLE r] [IN SCHEMA s] GRANT|REVOKE ...
			rest := toks[3:]
			for i := 0; i+2 < len(toks); i++ {
				if word(i, "FOR") && (word(i+1, "ROLE") || word(i+1, "USER")) {
					out = append(out, toks[i+2].text)
				}
			}
			for i := range rest {
				if word(3+i, "GRANT") || word(3+i, "REVOKE") {
					toks = rest[i:]
					break
				}
			}
		}
		keyword := ""
		switch {
		case word(0, "GRANT"):
			keyword = "TO"
		case word(0, "REVOKE"):
			keyword = "FROM"
		default:
			continue
		}
		at := -1
		for i := range toks {
			if word(i, keyword) {
				at = i
			}
		}
		if at < 0 {
			continue
		}
		for i := at + 1; i < len(toks); i++ {
			t := toks[i]
			if word(i, "WITH") || word(i, "GRANTED") || word(i, "CASCADE") || word(i, "RESTRICT") {
				break
			}
			if t.text == "," || word(i, "PUBLIC") || word(i, "GROUP") {
				continue
			}
			out = append(out, t.text)
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
