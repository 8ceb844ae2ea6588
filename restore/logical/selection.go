package logical

import (
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
	// ExcludeTables and ExcludeSchemas leave out these objects and
	// everything that depends on them.
	ExcludeTables, ExcludeSchemas []string
	// Sections: pre-data, data, post-data (empty: all).
	Sections []string
	// DataOnly restores table data only, into existing tables.
	DataOnly bool
}

// Narrows reports whether the selection chooses entries (rather than all).
func (s Selection) Narrows() bool {
	return len(s.Tables)+len(s.Schemas)+len(s.ExcludeTables)+len(s.ExcludeSchemas) > 0
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
			return fmt.Errorf("--section %q: give pre-data, data or post-data", sec)
		}
	}
	if s.DataOnly && len(s.Sections) > 0 {
		return fmt.Errorf("--data-only and --section do not go together: --data-only is --section data")
	}
	for _, list := range [][]string{s.Tables, s.Schemas, s.ExcludeTables, s.ExcludeSchemas} {
		for _, name := range list {
			if strings.TrimSpace(name) == "" {
				return fmt.Errorf("an empty table or schema name")
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
	leftOut  []string // foreign keys to tables not restored
	entries  []pgarchive.Entry
	readData bool
}

// restores reports whether the entry is restored.
func (p *plan) restores(e *pgarchive.Entry) bool { return p.ids == nil || p.ids[e.ID] }

// readsData reports whether pg_restore reads the entry's data block.
func (p *plan) readsData(e *pgarchive.Entry) bool { return p.readData && e.HasData && p.restores(e) }

// choose applies a selection to a dump's table of contents.
func choose(entries []pgarchive.Entry, sel Selection) (*plan, error) {
	p := &plan{entries: entries, readData: sel.dataRead()}
	if !sel.Narrows() {
		return p, nil
	}
	byID := make(map[int]*pgarchive.Entry, len(entries))
	dependents := map[int][]*pgarchive.Entry{}
	for i := range entries {
		e := &entries[i]
		byID[e.ID] = e
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
		for changed := true; changed; {
			changed = false
			for i := range entries {
				e := &entries[i]
				if chosen[e.ID] || excluded[e.ID] || never[e.Desc] {
					continue
				}
				if belongs(e, chosen, needOnly, byID, relation) {
					chosen[e.ID], changed = true, true
				}
			}
			for id := range chosen {
				for _, d := range byID[id].Deps {
					dep, ok := byID[d]
					if !ok || chosen[d] || excluded[d] || never[dep.Desc] {
						continue
					}
					// A table needs the table it is a partition or child
					// of; other relations are never pulled in by need.
					if relation(d) {
						if !(byID[id].Desc == "TABLE" && dep.Desc == "TABLE") {
							continue
						}
						needOnly[d] = true
					}
					if belongings[dep.Desc] && dep.Desc != "SEQUENCE" && dep.Desc != "TABLE" {
						continue // part of a relation that is not restored
					}
					chosen[d], changed = true, true
				}
			}
		}
	}
	for id := range chosen {
		if never[byID[id].Desc] {
			delete(chosen, id)
		}
	}
	// Foreign keys of restored tables that reference tables not restored.
	for i := range entries {
		e := &entries[i]
		if e.Desc != "FK CONSTRAINT" || chosen[e.ID] || excluded[e.ID] {
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
			p.leftOut = append(p.leftOut, fmt.Sprintf("foreign key %s of %s.%s (references %s, not restored)", name, e.Namespace, table, qualified(missing)))
		}
	}
	sort.Strings(p.leftOut)
	p.ids = chosen
	return p, nil
}

// belongs reports whether e comes with the chosen relations: it is of a
// kind that belongs to a relation, depends on a chosen entry (not one
// pulled in only by need), and every relation it depends on is chosen.
func belongs(e *pgarchive.Entry, chosen, needOnly map[int]bool, byID map[int]*pgarchive.Entry, relation func(int) bool) bool {
	if !belongings[e.Desc] {
		return false
	}
	deps := e.Deps
	if e.Desc == "SEQUENCE OWNED BY" {
		// It names only its sequence; the table owning it is the
		// sequence's relation.
		for _, d := range e.Deps {
			if s, ok := byID[d]; ok && s.Desc == "SEQUENCE" {
				deps = append(slices.Clone(deps), s.Deps...)
			}
		}
	}
	onChosen, onRelation, allRelations, all := false, false, true, true
	for _, d := range deps {
		if chosen[d] && !needOnly[d] {
			onChosen = true
			onRelation = onRelation || relation(d)
		}
		if relation(d) && !chosen[d] {
			allRelations = false
		}
		all = all && chosen[d]
	}
	switch e.Desc {
	case "INDEX ATTACH":
		return onChosen && all // both indexes
	case "TABLE", "SEQUENCE":
		// A partition or child of a chosen table, a sequence of one.
		return onRelation && allRelations
	}
	return onChosen && allRelations
}

// matchAll matches each name of a flag, refusing one that matches nothing.
func matchAll(entries []pgarchive.Entry, flag, kind string, names []string, match func([]pgarchive.Entry, string) []*pgarchive.Entry) ([]*pgarchive.Entry, error) {
	var out []*pgarchive.Entry
	for _, name := range names {
		matched := match(entries, name)
		if len(matched) == 0 {
			return nil, fmt.Errorf("%s %s: %s", flag, name, noSuch(entries, kind, name))
		}
		out = append(out, matched...)
	}
	return out, nil
}

// matchRelations finds the relations a --table name means: schema.name, or
// name in any schema.
func matchRelations(entries []pgarchive.Entry, name string) []*pgarchive.Entry {
	var out []*pgarchive.Entry
	for i := range entries {
		e := &entries[i]
		if !relationKinds[e.Desc] {
			continue
		}
		if e.Tag == name || e.Namespace+"."+e.Tag == name {
			out = append(out, e)
		}
	}
	return out
}

// matchSchema finds a schema's entry and every entry in it.
func matchSchema(entries []pgarchive.Entry, name string) []*pgarchive.Entry {
	var out []*pgarchive.Entry
	for i := range entries {
		e := &entries[i]
		if never[e.Desc] {
			continue
		}
		if e.Namespace == name || (e.Desc == "SCHEMA" && e.Tag == name) {
			out = append(out, e)
		}
	}
	return out
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
			n = e.Namespace
		case kind == "schema" && e.Desc == "SCHEMA":
			n = e.Tag
		}
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	msg := fmt.Sprintf("the backup has no %s named %q", kind, name)
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

func qualified(e *pgarchive.Entry) string {
	if e.Namespace == "" {
		return e.Tag
	}
	return e.Namespace + "." + e.Tag
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
