package pgarchive_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drctl/drctl/engine/pgarchive"
	"github.com/drctl/drctl/engine/pgtools"
)

// The fixtures are pg_dump -Fc of a small shop database (schemas, an enum,
// serial and identity columns, a trigger, a view, a partitioned table,
// grants, a comment, a large object, unicode names), uncompressed as drctl
// takes them, and gzip-compressed as a user's own dump may be.
var fixtures = []string{"testdata/shop.dump", "testdata/shop-gzip.dump"}

// findPgRestore finds pg_restore, which CI must have.
func findPgRestore(t *testing.T) string {
	t.Helper()
	p, err := pgtools.Find("pg_restore", "")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return p
}

func read(t *testing.T, path string) (*pgarchive.Reader, []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var passed bytes.Buffer
	a := pgarchive.NewReader(bytes.NewReader(data))
	a.Pass = &passed
	if err := a.ReadTOC(); err != nil {
		t.Fatal(err)
	}
	if err := a.ReadData(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(passed.Bytes(), data) {
		t.Fatalf("%s: %d bytes passed on, %d read: not the same", path, passed.Len(), len(data))
	}
	return a, data
}

// The table of contents is pg_restore's: the same entries in the same
// order, with the same types, schemas, names and owners.
func TestTOCMatchesPgRestore(t *testing.T) {
	pgRestore := findPgRestore(t)
	for _, path := range fixtures {
		a, _ := read(t, path)
		out, err := exec.Command(pgRestore, "--list", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, line := range strings.Split(string(out), "\n") {
			if line == "" || strings.HasPrefix(line, ";") {
				continue
			}
			// "ID; tableoid oid DESC SCHEMA TAG OWNER"
			id, rest, _ := strings.Cut(line, ";")
			f := strings.Fields(rest)
			want = append(want, id+" "+strings.Join(f[2:], " "))
		}
		for _, e := range a.Entries {
			switch e.Desc {
			case "ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE", "COMMENT":
				if e.Desc != "COMMENT" || strings.HasPrefix(e.Tag, "DATABASE ") {
					continue // pg_restore --list leaves them out
				}
			}
			schema := e.Namespace
			if schema == "" {
				schema = "-"
			}
			got = append(got, strings.TrimSpace(fmt.Sprintf("%d %s %s %s %s", e.ID, e.Desc, schema, e.Tag, e.Owner)))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("%s: table of contents differs from pg_restore --list:\ngot:\n%s\nwant:\n%s", path, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if a.Header.Database != "shop" || !strings.HasPrefix(a.Header.DumpVersion, "15.") {
			t.Fatalf("%s: header %+v", path, a.Header)
		}
	}
}

// Each table's data size is its rows as COPY text, as pg_restore writes
// them.
func TestDataSizes(t *testing.T) {
	pgRestore := findPgRestore(t)
	a, _ := read(t, fixtures[0])
	if a.Header.Compression != "none" {
		t.Fatalf("compression %q", a.Header.Compression)
	}
	tables := 0
	for _, e := range a.Entries {
		if e.Desc != "TABLE DATA" {
			continue
		}
		tables++
		script, err := exec.Command(pgRestore, "--data-only", "--schema", e.Namespace, "--table", e.Tag, "-f", "-", fixtures[0]).Output()
		if err != nil {
			t.Fatal(err)
		}
		_, rows, ok := strings.Cut(string(script), "FROM stdin;\n")
		if !ok {
			t.Fatalf("%s: no COPY in pg_restore's script", e.Tag)
		}
		rows, _, _ = strings.Cut(rows, "\\.\n")
		if want := int64(len(rows)); e.DataBytes != want {
			t.Errorf("%s.%s: data of %d bytes, pg_restore's COPY has %d", e.Namespace, e.Tag, e.DataBytes, want)
		}
	}
	if tables != 5 {
		t.Fatalf("%d tables with data, want 5", tables)
	}
	for _, e := range a.Entries {
		if e.Desc == "BLOBS" && e.DataBytes != int64(len("large object bytes")) {
			t.Fatalf("large objects: %d bytes", e.DataBytes)
		}
	}
	gz, _ := read(t, fixtures[1])
	if gz.Header.Compression != "gzip" {
		t.Fatalf("compression %q, want gzip", gz.Header.Compression)
	}
}

// Leaving data blocks out gives an archive pg_restore reads, with the
// other blocks intact.
func TestSkippedBlocks(t *testing.T) {
	pgRestore := findPgRestore(t)
	data, err := os.ReadFile(fixtures[0])
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	a := pgarchive.NewReader(bytes.NewReader(data))
	a.Pass = &out
	a.Skip = func(e *pgarchive.Entry) bool { return e.Tag != "sale_order" }
	if err := a.ReadTOC(); err != nil {
		t.Fatal(err)
	}
	if err := a.ReadData(); err != nil {
		t.Fatal(err)
	}
	again := pgarchive.NewReader(bytes.NewReader(out.Bytes()))
	if err := again.ReadTOC(); err != nil {
		t.Fatal(err)
	}
	if err := again.ReadData(); err != nil {
		t.Fatal(err)
	}
	for _, e := range again.Entries {
		if e.HasData && (e.Tag == "sale_order") != (e.DataBytes > 0) {
			t.Fatalf("%s %s: %d bytes of data after filtering", e.Desc, e.Tag, e.DataBytes)
		}
	}
	filtered := filepath.Join(t.TempDir(), "filtered.dump")
	os.WriteFile(filtered, out.Bytes(), 0o600)
	cmd := exec.Command(pgRestore, "--data-only", "--table", "sale_order", "-f", "-")
	cmd.Stdin = bytes.NewReader(out.Bytes())
	script, err := cmd.Output()
	if err != nil || !strings.Contains(string(script), "COPY sales.sale_order") {
		t.Fatalf("pg_restore of the filtered stream: %v\n%s", err, script)
	}
}

// Damaged archives are refused with ErrFormat, without reading or
// allocating what they claim.
func TestDamagedArchives(t *testing.T) {
	data, err := os.ReadFile(fixtures[0])
	if err != nil {
		t.Fatal(err)
	}
	parse := func(b []byte) error {
		a := pgarchive.NewReader(bytes.NewReader(b))
		if err := a.ReadTOC(); err != nil {
			return err
		}
		return a.ReadData()
	}
	huge := append([]byte(nil), data[:32]...)
	cases := map[string][]byte{
		"plain SQL":          []byte("--\n-- PostgreSQL database dump\n"),
		"cut in the TOC":     data[:200],
		"cut in a block":     data[:len(data)-100],
		"directory format":   append(append([]byte("PGDMP"), data[5:10]...), append([]byte{3}, data[11:]...)...),
		"a string of 1 TiB":  append(huge, 0, 0, 0, 0, 0x01),
		"unknown block type": append(append([]byte(nil), data...), 9, 0, 1, 0, 0, 0),
	}
	for name, b := range cases {
		if err := parse(b); !errors.Is(err, pgarchive.ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
}

// archiveWriter writes a version 1.14 custom archive as pg_dump does, with
// whatever entries a test wants.
type archiveWriter struct{ bytes.Buffer }

func (w *archiveWriter) int(v int) {
	sign := byte(0)
	if v < 0 {
		sign, v = 1, -v
	}
	w.WriteByte(sign)
	for i := 0; i < 4; i++ {
		w.WriteByte(byte(v >> (8 * i)))
	}
}

func (w *archiveWriter) str(s string) { w.int(len(s)); w.WriteString(s) }
func (w *archiveWriter) null()        { w.int(-1) }

type fakeEntry struct {
	id, hadDumper, section int
	desc, tag              string
	flag                   byte
	noCopy                 bool // table data as SQL (--inserts)
	blockType              byte // default: what the entry's kind has
}

func fakeArchive(entries []fakeEntry, blocks map[int]string) []byte {
	var w archiveWriter
	w.WriteString("PGDMP")
	w.Write([]byte{1, 14, 0, 4, 8, 1})
	w.int(0) // compression
	for _, v := range []int{0, 0, 12, 26, 10, 126, 0} {
		w.int(v)
	}
	w.str("shop")
	w.str("15.18")
	w.str("15.18")
	w.int(len(entries))
	for _, e := range entries {
		w.int(e.id)
		w.int(e.hadDumper)
		w.str("0")
		w.str("0")
		w.str(e.tag)
		w.str(e.desc)
		w.int(e.section)
		w.str("")
		w.str("")
		if e.desc == "TABLE DATA" && !e.noCopy {
			w.str("COPY public.t (id) FROM stdin;\n")
		} else {
			w.str("")
		}
		w.str("public")
		w.str("")
		w.str("")
		w.str("postgres")
		w.str("false")
		w.null()
		w.WriteByte(e.flag)
		w.Write(make([]byte, 8))
	}
	for _, e := range entries {
		data, ok := blocks[e.id]
		if !ok {
			continue
		}
		typ := e.blockType
		if typ == 0 {
			typ = map[string]byte{"BLOBS": 3}[e.desc]
			if typ == 0 {
				typ = 1
			}
		}
		w.WriteByte(typ)
		w.int(e.id)
		if typ == 3 {
			w.int(16384) // one large object
		}
		w.int(len(data))
		w.WriteString(data)
		w.int(0)
		if typ == 3 {
			w.int(0)
		}
	}
	return w.Bytes()
}

// Entries whose data flag and hadDumper disagree, or that carry data
// outside table data and large objects, would make drctl and pg_restore
// disagree on which blocks pg_restore reads: refused.
func TestEntriesThatWouldMisleadTheHoldBack(t *testing.T) {
	table := fakeEntry{id: 1, section: 2, desc: "TABLE", tag: "t", flag: 3}
	parse := func(b []byte) error {
		a := pgarchive.NewReader(bytes.NewReader(b))
		if err := a.ReadTOC(); err != nil {
			return err
		}
		return a.ReadData()
	}
	good := fakeArchive([]fakeEntry{table, {id: 2, hadDumper: 1, section: 3, desc: "TABLE DATA", tag: "t", flag: 1}}, map[int]string{2: "1\n2\n\\.\n\n\n"})
	if err := parse(good); err != nil {
		t.Fatalf("a well-formed archive: %v", err)
	}
	los := fakeArchive([]fakeEntry{table, {id: 2, hadDumper: 1, section: 3, desc: "BLOBS", tag: "BLOBS", flag: 1}}, map[int]string{2: "large"})
	if err := parse(los); err != nil {
		t.Fatalf("a well-formed archive with a large object: %v", err)
	}
	for name, entries := range map[string][]fakeEntry{
		"data with the no-data flag":  {table, {id: 2, hadDumper: 1, section: 3, desc: "TABLE DATA", tag: "t", flag: 3}},
		"no data with a data flag":    {table, {id: 2, hadDumper: 0, section: 3, desc: "TABLE DATA", tag: "t", flag: 1}},
		"an unknown flag":             {table, {id: 2, hadDumper: 1, section: 3, desc: "TABLE DATA", tag: "t", flag: 7}},
		"data on a comment":           {table, {id: 2, hadDumper: 1, section: 1, desc: "COMMENT", tag: "TABLE t", flag: 1}},
		"table data in pre-data":      {table, {id: 2, hadDumper: 1, section: 2, desc: "TABLE DATA", tag: "t", flag: 1}},
		"data on an ACL":              {table, {id: 2, hadDumper: 1, section: 1, desc: "ACL", tag: "TABLE t", flag: 1}},
		"table data as SQL":           {table, {id: 2, hadDumper: 1, section: 3, desc: "TABLE DATA", tag: "t", flag: 1, noCopy: true}},
		"SQL in a large-object entry": {table, {id: 2, hadDumper: 1, section: 3, desc: "BLOBS", tag: "BLOBS", flag: 1, blockType: 1}},
		"large objects in table data": {table, {id: 2, hadDumper: 1, section: 3, desc: "TABLE DATA", tag: "t", flag: 1, blockType: 3}},
	} {
		if err := parse(fakeArchive(entries, map[int]string{2: "x"})); !errors.Is(err, pgarchive.ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	wide := append([]byte(nil), good...)
	wide[8] = 8 // intSize: pg_restore would add these up in a 4-byte int
	if err := parse(wide); !errors.Is(err, pgarchive.ErrFormat) {
		t.Errorf("8-byte integers: %v, want ErrFormat", err)
	}
	big := fakeArchive([]fakeEntry{table, {id: 1 << 31, section: 2, desc: "TABLE", tag: "u", flag: 3}}, nil)
	if err := parse(big); !errors.Is(err, pgarchive.ErrFormat) {
		t.Errorf("an id beyond a C int: %v, want ErrFormat", err)
	}
}
