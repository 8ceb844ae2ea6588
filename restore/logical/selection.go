package logical

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/drctl/drctl/engine/pgarchive"
)

// Selection narrows a restore to part of a dump, as pg_restore's options
// of the same names do, but with the objects a table needs and the ones
// that belong to it.
type Selection struct {
	// Tables: tables (or views, sequences) by name, schema-qualified
	// (sales.sale_order) or not (sale_order, in any schema). Each comes
	// with its data, indexes, constraints, triggers, rules, policies,
	// comments, grants, column defaults and the sequences it owns, and with
	// what it needs to be created: its schema, types and functions, and
	// the table it is a partition or child of.
	Tables []string
	// Schemas: every object of these schemas.
	Schemas []string
	// ExcludeTables, ExcludeSchemas and ExcludeExtensions leave out these
	// objects and everything that depends on them.
	ExcludeTables, ExcludeSchemas, ExcludeExtensions []string
	// Sections: pre-data, data, post-data (empty: all).
	Sections []string
	// DataOnly restores table data only, into existing tables.
	DataOnly bool
}

// ErrSelection marks a selection that cannot be made: a name that matches
// nothing or several tables, a view without its tables, nothing left.
var ErrSelection = errors.New("bad selection")

// Narrows reports whether the selection chooses entries (rather than all).
func (s Selection) Narrows() bool {
	return len(s.Tables)+len(s.Schemas)+len(s.ExcludeTables)+len(s.ExcludeSchemas)+len(s.ExcludeExtensions) > 0
}

// dataRead reports whether pg_restore reads table data with these options.
func (s Selection) dataRead() bool {
	return s.DataOnly || len(s.Sections) == 0 || slices.Contains(s.Sections, "data")
}

// createsObjects reports whether the restore creates tables (pre-data):
// only then must the target be empty.
func (s Selection) createsObjects() bool {
	return !s.DataOnly && (len(s.Sections) == 0 || slices.Contains(s.Sections, "pre-data"))
}

// Check refuses unknown sections and options that cannot go together.
func (s Selection) Check() error {
	for _, sec := range s.Sections {
		if sec != "pre-data" && sec != "data" && sec != "post-data" {
			return fmt.Errorf("%w: --section %q: give pre-data, data or post-data", ErrSelection, sec)
		}
	}
	if s.DataOnly && len(s.Sections) > 0 {
		return fmt.Errorf("%w: --data-only and --section do not go together: --data-only is --section data", ErrSelection)
	}
	for _, list := range [][]string{s.Tables, s.Schemas, s.ExcludeTables, s.ExcludeSchemas, s.ExcludeExtensions} {
		for _, name := range list {
			if strings.TrimSpace(name) == "" {
				return fmt.Errorf("%w: an empty table, schema or extension name", ErrSelection)
			}
		}
	}
	return nil
}

// relation kinds: what --table names.
var relationKinds = map[string]bool{"TABLE": true, "VIEW": true, "MATERIALIZED VIEW": true, "FOREIGN TABLE": true, "SEQUENCE": true}

// belongings are the entries that come with the relations they depend on.
var belongings = map[string]bool{
	"TABLE DATA": true, "INDEX": true, "INDEX ATTACH": true, "CONSTRAINT": true, "CHECK CONSTRAINT": true,
	"FK CONSTRAINT": true, "TRIGGER": true, "RULE": true, "POLICY": true, "ROW SECURITY": true,
	"DEFAULT": true, "SEQUENCE": true, "SEQUENCE OWNED BY": true, "SEQUENCE SET": true,
	"COMMENT": true, "ACL": true, "SECURITY LABEL": true, "STATISTICS": true, "TABLE ATTACH": true,
	"MATERIALIZED VIEW DATA": true, "TABLE": true, // TABLE: partitions and children
}

// never are entries pg_restore handles itself, whatever the list says.
var never = map[string]bool{"ENCODING": true, "STDSTRINGS": true, "SEARCHPATH": true, "DATABASE": true, "DATABASE PROPERTIES": true}

// plan is the outcome of a selection: the entries to restore (nil: all)
// and what was left out that the user might expect.
type plan struct {
	ids      map[int]bool
	sections map[pgarchive.Section]bool // nil: all
	leftOut  []string                   // foreign keys to tables not restored
	entries  []pgarchive.Entry
	readData bool
}

// restores reports whether the entry is restored.
func (p *plan) restores(e *pgarchive.Entry) bool { return p.ids == nil || p.ids[e.ID] }

// inSections reports whether the entry is in a section restored.
func (p *plan) inSections(e *pgarchive.Entry) bool {
	if p.sections == nil {
		return true
	}
	if e.Section == pgarchive.SectionNone { // comments and grants: with the schema
		return p.sections[pgarchive.SectionPreData] || p.sections[pgarchive.SectionPostData]
	}
	return p.sections[e.Section]
}

// readsData reports whether pg_restore reads the entry's data block.
func (p *plan) readsData(e *pgarchive.Entry) bool { return p.readData && e.HasData && p.restores(e) }

// choose applies a selection to a dump's table of contents.
func choose(entries []pgarchive.Entry, sel Selection) (*plan, error) {
	p := &plan{entries: entries, readData: sel.dataRead()}
	if sel.DataOnly || len(sel.Sections) > 0 {
		p.sections = map[pgarchive.Section]bool{pgarchive.SectionData: true}
		if !sel.DataOnly {
			p.sections = map[pgarchive.Section]bool{}
			for _, name := range sel.Sections {
				p.sections[map[string]pgarchive.Section{"pre-data": pgarchive.SectionPreData, "data": pgarchive.SectionData, "post-data": pgarchive.SectionPostData}[name]] = true
			}
		}
	}
	if !sel.Narrows() {
		return p, nil
	}
	byID := make(map[int]*pgarchive.Entry, len(entries))
	dependents := map[int][]*pgarchive.Entry{}
	for i := range entries {
		e := &entries[i]
		byID[e.ID] = e
		slices.Sort(e.Deps)
		e.Deps = slices.Compact(e.Deps)
		for _, d := range e.Deps {
			dependents[d] = append(dependents[d], e)
		}
	}
	relation := func(id int) bool {
		d, ok := byID[id]
		return ok && relationKinds[d.Desc] && d.Desc != "SEQUENCE"
	}

	// What is left out, and everything that depends on it.
	excluded := map[int]bool{}
	queue, err := matchAll(entries, "--exclude-table", "table", sel.ExcludeTables, matchRelations)
	if err != nil {
		return nil, err
	}
	inSchemas, err := matchAll(entries, "--exclude-schema", "schema", sel.ExcludeSchemas, matchSchema)
	if err != nil {
		return nil, err
	}
	queue = append(queue, inSchemas...)
	extensions, err := matchAll(entries, "--exclude-extension", "extension", sel.ExcludeExtensions, matchExtension)
	if err != nil {
		return nil, err
	}
	queue = append(queue, extensions...)
	for len(queue) > 0 {
		e := queue[0]
		queue = queue[1:]
		if excluded[e.ID] {
			continue
		}
		excluded[e.ID] = true
		queue = append(queue, dependents[e.ID]...)
	}

	chosen := map[int]bool{}
	if len(sel.Tables)+len(sel.Schemas) == 0 {
		for i := range entries {
			if !excluded[entries[i].ID] {
				chosen[entries[i].ID] = true
			}
		}
	} else {
		tables, err := matchAll(entries, "--table", "table", sel.Tables, matchRelations)
		if err != nil {
			return nil, err
		}
		inSchemas, err := matchAll(entries, "--schema", "schema", sel.Schemas, matchSchema)
		if err != nil {
			return nil, err
		}
		for _, e := range append(tables, inSchemas...) {
			chosen[e.ID] = true
		}
		for id := range chosen {
			if excluded[id] {
				delete(chosen, id)
			}
		}
		// Grow to a fixed point: what belongs to a chosen relation, and
		// what a chosen entry needs. A parent table pulled in by need
		// brings nothing of its own (not its other partitions, nor data).
		needOnly := map[int]bool{}
		processed := map[int]bool{}
		standing := map[int]*entryStanding{}
		work := make([]int, 0, len(chosen))
		for id := range chosen {
			work = append(work, id)
		}
		sort.Ints(work)
		for len(work) > 0 {
			id := work[len(work)-1]
			work = work[:len(work)-1]
			for _, d := range byID[id].Deps {
				dep, ok := byID[d]
				if !ok || chosen[d] || excluded[d] || never[dep.Desc] {
					continue
				}
				// A table needs the table it is a partition or child of;
				// other relations are never pulled in by need.
				if relation(d) {
					if !(byID[id].Desc == "TABLE" && dep.Desc == "TABLE") {
						continue
					}
					needOnly[d] = true
				}
				if belongings[dep.Desc] && dep.Desc != "SEQUENCE" && dep.Desc != "TABLE" {
					continue // part of a relation that is not restored
				}
				chosen[d] = true
				work = append(work, d)
			}
			// What depends on it may now belong. Each entry's standing is
			// kept up to date as its dependencies are processed, so that
			// an entry with many is not rescanned for each of them.
			processed[id] = true
			for _, e := range dependents[id] {
				if chosen[e.ID] || excluded[e.ID] || never[e.Desc] || !belongings[e.Desc] {
					continue
				}
				if standing[e.ID] == nil {
					standing[e.ID] = newStanding(e, processed, needOnly, relation)
				} else {
					standing[e.ID].processed(id, needOnly, relation)
				}
				var ok bool
				if e.Desc == "SEQUENCE OWNED BY" {
					ok = ownedByBelongs(e, chosen, byID, relation)
				} else {
					ok = standing[e.ID].belongs(e.Desc)
				}
				if ok {
					chosen[e.ID] = true
					work = append(work, e.ID)
				}
			}
		}
	}
	for id := range chosen {
		if never[byID[id].Desc] {
			delete(chosen, id)
		}
	}
	// A view (or table) named by --table needs the relations it is built
	// on: say which to add rather than fail half-way in pg_restore.
	for _, name := range sel.Tables {
		matched, _ := matchRelations(entries, name)
		for _, e := range matched {
			if e.Desc == "SEQUENCE" {
				continue
			}
			var missing []string
			for _, d := range e.Deps {
				if relation(d) && !chosen[d] {
					missing = append(missing, qualified(byID[d]))
				}
			}
			if len(missing) > 0 {
				return nil, fmt.Errorf("%w: --table %s: %s %s is built on %s, which the selection leaves out: add --table %s", ErrSelection,
					name, strings.ToLower(e.Desc), qualified(e), strings.Join(missing, ", "), strings.Join(missing, " --table "))
			}
		}
	}
	if len(chosen) == 0 {
		return nil, fmt.Errorf("%w: the selection leaves nothing to restore", ErrSelection)
	}
	// Foreign keys of restored tables that reference tables not restored.
	for i := range entries {
		e := &entries[i]
		if e.Desc != "FK CONSTRAINT" || chosen[e.ID] {
			continue
		}
		// Its tag is "<table> <constraint>".
		table, name, ok := strings.Cut(e.Tag, " ")
		if !ok {
			continue
		}
		own := false
		var missing *pgarchive.Entry
		for _, d := range e.Deps {
			if !relation(d) {
				continue
			}
			if chosen[d] && byID[d].Tag == table && byID[d].Namespace == e.Namespace {
				own = true
			} else if !chosen[d] {
				missing = byID[d]
			}
		}
		if own && missing != nil {
			p.leftOut = append(p.leftOut, pgarchive.Printable(fmt.Sprintf("foreign key %s of %s.%s (references %s, not restored)", name, e.Namespace, table, qualified(missing))))
		}
	}
	sort.Strings(p.leftOut)
	p.ids = chosen
	return p, nil
}

// entryStanding is where an entry stands towards belonging, from the
// dependencies processed so far.
type entryStanding struct {
	unchosenRel, unchosen int  // relation dependencies, all dependencies not yet processed
	on, onRel             bool // depends on a processed entry (a relation) not pulled in only by need
}

func newStanding(e *pgarchive.Entry, processed, needOnly map[int]bool, relation func(int) bool) *entryStanding {
	st := &entryStanding{}
	for _, d := range e.Deps {
		if !processed[d] {
			st.unchosen++
			if relation(d) {
				st.unchosenRel++
			}
			continue
		}
		st.on = st.on || !needOnly[d]
		st.onRel = st.onRel || (!needOnly[d] && relation(d))
	}
	return st
}

// processed accounts for dependency d having been chosen and processed.
func (st *entryStanding) processed(d int, needOnly map[int]bool, relation func(int) bool) {
	st.unchosen--
	if relation(d) {
		st.unchosenRel--
	}
	st.on = st.on || !needOnly[d]
	st.onRel = st.onRel || (!needOnly[d] && relation(d))
}

// belongs reports whether the entry comes with the chosen relations: it
// depends on a chosen entry (not one pulled in only by need), and every
// relation it depends on is chosen.
func (st *entryStanding) belongs(desc string) bool {
	switch desc {
	case "INDEX ATTACH":
		return st.on && st.unchosen == 0 // both indexes
	case "TABLE", "SEQUENCE":
		return st.onRel && st.unchosenRel == 0 // a partition or child, a sequence of a chosen table
	}
	return st.on && st.unchosenRel == 0
}

// ownedByBelongs decides for a SEQUENCE OWNED BY entry, which names only
// its sequence: it comes when its sequence is chosen and so is every
// relation the sequence depends on (the table owning it).
func ownedByBelongs(e *pgarchive.Entry, chosen map[int]bool, byID map[int]*pgarchive.Entry, relation func(int) bool) bool {
	found := false
	for _, d := range e.Deps {
		if relation(d) && !chosen[d] {
			return false
		}
		seq, ok := byID[d]
		if !ok || seq.Desc != "SEQUENCE" || !chosen[d] {
			continue
		}
		for _, rd := range seq.Deps {
			if relation(rd) && !chosen[rd] {
				return false
			}
		}
		found = true
	}
	return found
}

// matchAll matches each name of a flag, refusing one that matches nothing.
func matchAll(entries []pgarchive.Entry, flag, kind string, names []string, match func([]pgarchive.Entry, string) ([]*pgarchive.Entry, error)) ([]*pgarchive.Entry, error) {
	var out []*pgarchive.Entry
	for _, name := range names {
		matched, err := match(entries, name)
		if err != nil {
			return nil, fmt.Errorf("%w: %s %s: %v", ErrSelection, flag, name, err)
		}
		if len(matched) == 0 {
			return nil, fmt.Errorf("%w: %s %s: %s", ErrSelection, flag, name, noSuch(entries, kind, name))
		}
		out = append(out, matched...)
	}
	return out, nil
}

// identifier is one part of a name as given: "Quoted" parts match
// exactly; unquoted ones exactly or folded to lower case, as SQL folds them.
type identifier struct {
	text   string
	quoted bool
}

func (id identifier) matches(s string) bool {
	return s == id.text || (!id.quoted && s == strings.ToLower(id.text))
}

// parseName splits schema.name, honouring double quotes; without quotes
// the first dot separates the schema.
func parseName(name string) ([]identifier, error) {
	if !strings.Contains(name, `"`) {
		if schema, rel, ok := strings.Cut(name, "."); ok && schema != "" && rel != "" {
			return []identifier{{schema, false}, {rel, false}}, nil
		}
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") {
			return nil, fmt.Errorf("an empty part in the name")
		}
		return []identifier{{name, false}}, nil
	}
	var parts []identifier
	for _, t := range sqlTokens(name) {
		switch {
		case t.quoted:
			parts = append(parts, identifier{t.text, true})
		case t.text == "," || strings.HasPrefix(t.text, "("):
			return nil, fmt.Errorf("not a name")
		default:
			for i, p := range strings.Split(t.text, ".") {
				if p == "" && (i == 0 || i == len(strings.Split(t.text, "."))-1) && len(parts) > 0 {
					continue // a dot next to a quoted part
				}
				if p == "" {
					return nil, fmt.Errorf("an empty part in the name")
				}
				parts = append(parts, identifier{p, false})
			}
		}
	}
	if len(parts) == 0 || len(parts) > 2 {
		return nil, fmt.Errorf("give name or schema.name (double-quote parts with dots or capitals)")
	}
	return parts, nil
}

// matchRelations finds the relations a --table name means: schema.name, or
// name in any one schema (a name in several schemas must be qualified).
func matchRelations(entries []pgarchive.Entry, name string) ([]*pgarchive.Entry, error) {
	parts, err := parseName(name)
	if err != nil {
		return nil, err
	}
	var out []*pgarchive.Entry
	for i := range entries {
		e := &entries[i]
		if !relationKinds[e.Desc] {
			continue
		}
		if len(parts) == 2 && parts[0].matches(e.Namespace) && parts[1].matches(e.Tag) ||
			len(parts) == 1 && parts[0].matches(e.Tag) || e.Tag == name {
			out = append(out, e)
		}
	}
	if len(parts) == 1 {
		schemas := map[string]bool{}
		var names []string
		for _, e := range out {
			if !schemas[e.Namespace] {
				schemas[e.Namespace] = true
				names = append(names, qualified(e))
			}
		}
		if len(schemas) > 1 {
			sort.Strings(names)
			return nil, fmt.Errorf("it names %s: qualify it with its schema", strings.Join(names, " and "))
		}
	}
	return out, nil
}

// matchSchema finds a schema's entry and every entry in it.
func matchSchema(entries []pgarchive.Entry, name string) ([]*pgarchive.Entry, error) {
	parts, err := parseName(name)
	if err != nil || len(parts) != 1 {
		return nil, fmt.Errorf("not a schema name")
	}
	var out []*pgarchive.Entry
	for i := range entries {
		e := &entries[i]
		if never[e.Desc] {
			continue
		}
		if e.Namespace != "" && parts[0].matches(e.Namespace) || (e.Desc == "SCHEMA" && parts[0].matches(e.Tag)) {
			out = append(out, e)
		}
	}
	return out, nil
}

// matchExtension finds an extension's entry.
func matchExtension(entries []pgarchive.Entry, name string) ([]*pgarchive.Entry, error) {
	var out []*pgarchive.Entry
	for i := range entries {
		if entries[i].Desc == "EXTENSION" && entries[i].Tag == name {
			out = append(out, &entries[i])
		}
	}
	return out, nil
}

// noSuch says that a name matched nothing, with the names that exist.
func noSuch(entries []pgarchive.Entry, kind, name string) string {
	var names []string
	seen := map[string]bool{}
	for i := range entries {
		e := &entries[i]
		var n string
		switch {
		case kind == "table" && relationKinds[e.Desc] && e.Desc != "SEQUENCE":
			n = qualified(e)
		case kind == "schema" && e.Namespace != "":
			n = pgarchive.Printable(e.Namespace)
		case kind == "schema" && e.Desc == "SCHEMA":
			n = pgarchive.Printable(e.Tag)
		case kind == "extension" && e.Desc == "EXTENSION":
			n = pgarchive.Printable(e.Tag)
		}
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	msg := fmt.Sprintf("the backup has no %s named %s", kind, name)
	var close []string
	_, want, _ := strings.Cut(name, ".")
	if want == "" {
		want = name
	}
	for _, n := range names {
		_, short, ok := strings.Cut(n, ".")
		if !ok {
			short = n
		}
		short, want := strings.ToLower(short), strings.ToLower(strings.Trim(want, `"`))
		if strings.Contains(short, want) || strings.Contains(want, short) || distance(short, want) <= 2 {
			close = append(close, n)
		}
	}
	if len(close) > 0 && len(close) <= 5 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(close, ", "))
	} else if len(names) == 0 {
		return msg
	} else if len(names) > 10 {
		msg += fmt.Sprintf(" (it has %d, e.g. %s; drctl show ID --contents lists them)", len(names), strings.Join(names[:10], ", "))
	} else {
		msg += fmt.Sprintf(" (it has %s)", strings.Join(names, ", "))
	}
	return msg
}

// distance is the edit distance of two short names.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// qualified is an entry's schema.name for display.
func qualified(e *pgarchive.Entry) string {
	if e.Namespace == "" {
		return pgarchive.Printable(e.Tag)
	}
	return pgarchive.Printable(e.Namespace + "." + e.Tag)
}

// listFile is pg_restore's --use-list for the plan, in archive order (the
// stream cannot be read out of order).
func (p *plan) listFile() string {
	var b strings.Builder
	for i := range p.entries {
		if p.ids[p.entries[i].ID] {
			fmt.Fprintf(&b, "%d;\n", p.entries[i].ID)
		}
	}
	return b.String()
}
