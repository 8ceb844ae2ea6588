package logical

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/drctl/drctl/engine/pgarchive"
)

// shopTOC is the table of contents of engine/pgarchive's fixture dump.
func shopTOC(t *testing.T) []pgarchive.Entry {
	t.Helper()
	f, err := os.Open("../../engine/pgarchive/testdata/shop.dump")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := pgarchive.NewReader(f)
	if err := a.ReadTOC(); err != nil {
		t.Fatal(err)
	}
	return a.Entries
}

func chosen(t *testing.T, entries []pgarchive.Entry, sel Selection) ([]string, *plan) {
	t.Helper()
	p, err := choose(entries, sel)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := range entries {
		if p.ids[entries[i].ID] {
			out = append(out, entries[i].Desc+" "+qualified(&entries[i]))
		}
	}
	sort.Strings(out)
	return out, p
}

func TestTableSelection(t *testing.T) {
	toc := shopTOC(t)
	got, p := chosen(t, toc, Selection{Tables: []string{"sale_order"}})
	want := []string{
		"ACL sales.TABLE sale_order", "COMMENT sales.TABLE sale_order",
		"CONSTRAINT sales.sale_order sale_order_pkey", "FUNCTION sales.touch()",
		"INDEX sales.sale_order_partner_id_idx", "SCHEMA sales",
		"SEQUENCE OWNED BY sales.ref_seq", "SEQUENCE SET sales.ref_seq", "SEQUENCE SET sales.sale_order_id_seq",
		"SEQUENCE sales.ref_seq", "SEQUENCE sales.sale_order_id_seq",
		"TABLE DATA sales.sale_order", "TABLE sales.sale_order",
		"TRIGGER sales.sale_order t_touch", "TYPE sales.state",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("--table sale_order chose\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(p.leftOut) != 1 || !strings.Contains(p.leftOut[0], "sale_order_partner_id_fkey") || !strings.Contains(p.leftOut[0], "sales.partner") {
		t.Fatalf("left out %v, want the foreign key to sales.partner", p.leftOut)
	}
	// Qualified, and two tables: the foreign key between them comes too.
	got, p = chosen(t, toc, Selection{Tables: []string{"sales.sale_order", "sales.partner"}})
	if !contains(got, "FK CONSTRAINT sales.sale_order sale_order_partner_id_fkey") || !contains(got, "DEFAULT sales.partner id") ||
		!contains(got, "SEQUENCE OWNED BY sales.partner_id_seq") || len(p.leftOut) != 0 {
		t.Fatalf("two tables: %v, left out %v", got, p.leftOut)
	}
	// A partition comes with its partitioned table, but not the table's
	// other belongings.
	got, _ = chosen(t, toc, Selection{Tables: []string{"log_2026"}})
	if !reflect.DeepEqual(got, []string{"TABLE ATTACH public.log_2026", "TABLE DATA public.log_2026", "TABLE public.log", "TABLE public.log_2026"}) {
		t.Fatalf("--table log_2026 chose %v", got)
	}
}

func TestSchemaAndExclusions(t *testing.T) {
	toc := shopTOC(t)
	got, _ := chosen(t, toc, Selection{Schemas: []string{"public"}})
	for _, g := range got {
		if strings.Contains(g, "sales") {
			t.Fatalf("--schema public chose %s", g)
		}
	}
	if !contains(got, "TABLE public.Ünïcode tåble") || !contains(got, "TABLE DATA public.log_2026") {
		t.Fatalf("--schema public: %v", got)
	}
	got, _ = chosen(t, toc, Selection{ExcludeTables: []string{"sales.sale_order"}})
	for _, g := range got {
		if strings.Contains(g, "sale_order") || strings.Contains(g, "v_orders") || strings.Contains(g, "line_order_id_fkey") {
			t.Fatalf("--exclude-table sale_order kept %s (or what depends on it)", g)
		}
	}
	if !contains(got, "TABLE DATA sales.partner") || !contains(got, "BLOBS BLOBS") {
		t.Fatalf("--exclude-table sale_order lost other tables: %v", got)
	}
	got, _ = chosen(t, toc, Selection{ExcludeSchemas: []string{"sales"}})
	for _, g := range got {
		if strings.Contains(g, "sales") {
			t.Fatalf("--exclude-schema sales kept %s", g)
		}
	}
}

func TestUnknownNames(t *testing.T) {
	toc := shopTOC(t)
	for _, sel := range []Selection{{Tables: []string{"sale_orders"}}, {Tables: []string{"public.sale_order"}},
		{Schemas: []string{"pos"}}, {ExcludeTables: []string{"nope"}}, {ExcludeSchemas: []string{"nope"}}} {
		_, err := choose(toc, sel)
		if err == nil || !strings.Contains(err.Error(), "the backup has no") {
			t.Fatalf("%+v: %v", sel, err)
		}
	}
	_, err := choose(toc, Selection{Tables: []string{"sale_orders"}})
	if !strings.Contains(err.Error(), "sales.sale_order") {
		t.Fatalf("the error does not list the tables there are: %v", err)
	}
	for _, sel := range []Selection{{Sections: []string{"indexes"}}, {Sections: []string{"data"}, DataOnly: true}, {Tables: []string{" "}}} {
		if sel.Check() == nil {
			t.Fatalf("%+v accepted", sel)
		}
	}
}

func TestACLRoles(t *testing.T) {
	for defn, want := range map[string][]string{
		"GRANT SELECT ON TABLE sales.partner TO auditor;\nGRANT SELECT ON TABLE sales.partner TO app;\n":   {"auditor", "app"},
		`GRANT SELECT(id),UPDATE(name) ON TABLE t TO "Odd ""Role""", app WITH GRANT OPTION;` + "\n":        {`Odd "Role"`, "app"},
		"REVOKE ALL ON SCHEMA public FROM PUBLIC;\nGRANT USAGE ON SCHEMA public TO PUBLIC;\n":              nil,
		"SET SESSION AUTHORIZATION boss;\nGRANT ALL ON TABLE t TO worker;\nRESET SESSION AUTHORIZATION;\n": {"boss", "worker"},
		"ALTER DEFAULT PRIVILEGES FOR ROLE owner IN SCHEMA s GRANT SELECT ON TABLES TO reader;\n":          {"owner", "reader"},
		"REVOKE ALL ON TABLE \"TO\" FROM olduser;\n":                                                       {"olduser"},
	} {
		if got := aclRoles(defn); !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %q, want %q", defn, got, want)
		}
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// An entry that depends on many others (a crafted dump, or a comment on a
// huge schema) is not rescanned for each of them: choosing stays linear.
// (Quadratic, this took minutes; it is not timed here, only run.)
func TestChoosingFromAWideTOC(t *testing.T) {
	const n = 20000
	entries := []pgarchive.Entry{{ID: 1, Desc: "SCHEMA", Tag: "s", Section: pgarchive.SectionPreData}}
	var all []int
	for i := 0; i < n; i++ {
		id := 10 + i
		all = append(all, id)
		entries = append(entries, pgarchive.Entry{ID: id, Desc: "TABLE", Namespace: "s", Tag: fmt.Sprintf("t%d", i), Deps: []int{1}, Section: pgarchive.SectionPreData})
	}
	entries = append(entries,
		pgarchive.Entry{ID: 5, Desc: "VIEW", Namespace: "other", Tag: "v", Section: pgarchive.SectionPreData},
		pgarchive.Entry{ID: 6, Desc: "COMMENT", Namespace: "other", Tag: "wide", Deps: append(append([]int{}, all...), 5), Section: pgarchive.SectionNone})
	p, err := choose(entries, Selection{Schemas: []string{"s"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.ids) != n+1 || p.ids[6] {
		t.Fatalf("chose %d entries (comment on a view not restored chosen: %v)", len(p.ids), p.ids[6])
	}
}
