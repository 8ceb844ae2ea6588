package wal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/storage/filestore"
)

const seg16 = 16 << 20

func entriesFor(names ...string) []Entry {
	var out []Entry
	for _, n := range names {
		out = append(out, Entry{Name: n, Hash: "00"})
	}
	return out
}

func TestSegmentNames(t *testing.T) {
	s, ok := ParseSegmentName("0000000200000001000000FF", seg16)
	if !ok || s.Timeline != 2 || s.No != 0x1FF {
		t.Fatalf("parse: %+v %v", s, ok)
	}
	if got := s.Next().Name(seg16); got != "000000020000000200000000" {
		t.Fatalf("next of ...01000000FF = %s", got)
	}
	if _, ok := ParseSegmentName("000000010000000000000100", seg16); ok {
		t.Fatal("segment number past the last of a log id accepted")
	}
	lsn, _ := ParseLSN("1/FF000028")
	if SegmentOf(1, lsn, seg16).Name(seg16) != "0000000100000001000000FF" || lsn.String() != "1/FF000028" {
		t.Fatalf("SegmentOf(1/FF000028) = %s", SegmentOf(1, lsn, seg16).Name(seg16))
	}
}

func TestArchivableNames(t *testing.T) {
	for name, want := range map[string]bool{
		"000000010000000000000003":                 true,
		"00000002.history":                         true,
		"000000010000000000000003.00000028.backup": true,
		"000000010000000000000005.partial":         true, // left by a promotion
		"RECOVERYXLOG":                             false,
		"000000010000000000000003.tmp":             false,
		"../000000010000000000000003":              false,
	} {
		if IsArchivable(name) != want {
			t.Errorf("IsArchivable(%q) = %v", name, !want)
		}
	}
	e, ok := ParseKey("wal/000000010000000000000005.partial.0123456789abcdef0123456789abcdef.zst.age")
	if !ok || e.Name != "000000010000000000000005.partial" || e.Partial {
		t.Fatalf("key of an archived .partial: %+v %v", e, ok)
	}
	e, ok = ParseKey("wal/000000010000000000000005.partial.zst.age")
	if !ok || e.Name != "000000010000000000000005" || !e.Partial {
		t.Fatalf("key of wal-receive's partial: %+v %v", e, ok)
	}
}

func TestChain(t *testing.T) {
	start, _ := ParseSegmentName("000000010000000000000003", seg16)
	stop, _ := ParseLSN("0/4000100") // needs segments 3 and 4
	full := entriesFor("000000010000000000000003", "000000010000000000000004", "000000010000000000000005", "000000010000000000000006")

	rep := Chain(full, nil, start, stop, seg16)
	if !rep.OK || !rep.Restorable || rep.WindowTo != "0/7000000" || rep.LastSegment != "000000010000000000000006" {
		t.Fatalf("complete chain: %+v", rep)
	}
	gapAfter := entriesFor("000000010000000000000003", "000000010000000000000004", "000000010000000000000006")
	rep = Chain(gapAfter, nil, start, stop, seg16)
	if rep.OK || !rep.Restorable || fmt.Sprint(rep.Missing) != "[000000010000000000000005]" || rep.WindowTo != "0/5000000" {
		t.Fatalf("gap after the backup: %+v", rep)
	}
	gapInside := entriesFor("000000010000000000000003", "000000010000000000000005")
	rep = Chain(gapInside, nil, start, stop, seg16)
	if rep.Restorable || rep.WindowTo != "" || fmt.Sprint(rep.Missing) != "[000000010000000000000004]" {
		t.Fatalf("gap inside the backup: %+v", rep)
	}
	missingEnd := entriesFor("000000010000000000000003")
	if rep = Chain(missingEnd, nil, start, stop, seg16); rep.Restorable {
		t.Fatalf("backup's last segment not archived, still restorable: %+v", rep)
	}

	// Timeline 2 branched from 1 inside segment 5: 1/3..1/4, then 2/5..2/7.
	at, _ := ParseLSN("0/5800000")
	hist := map[uint32]Switch{2: {Parent: 1, At: at}}
	tl := entriesFor("000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
		"000000020000000000000005", "000000020000000000000006", "000000020000000000000007")
	rep = Chain(tl, hist, start, stop, seg16)
	if !rep.OK || fmt.Sprint(rep.Timelines) != "[1 2]" || rep.LastSegment != "000000020000000000000007" {
		t.Fatalf("across a promotion: %+v", rep)
	}
	rep = Chain(tl[:5], hist, start, stop, seg16) // 2/6 missing... and 2/7 is gone too
	if !rep.OK || rep.LastSegment != "000000020000000000000006" {
		t.Fatalf("newest on timeline 2 is 6: %+v", rep)
	}
	twice := append(entriesFor("000000010000000000000003"), full...)
	twice[0].Hash = "ff"
	if rep = Chain(twice, nil, start, stop, seg16); rep.OK || fmt.Sprint(rep.Conflicts) != "[000000010000000000000003]" {
		t.Fatalf("a name archived twice with different content: %+v", rep)
	}
	noTL2Start := append(entriesFor("000000010000000000000003", "000000010000000000000004"), tl[4:]...)
	rep = Chain(noTL2Start, hist, start, stop, seg16)
	if rep.OK || fmt.Sprint(rep.Missing) != "[000000020000000000000005]" {
		t.Fatalf("first segment of timeline 2 missing: %+v", rep)
	}
}

// testArchive is an archive in a fresh file repository, with a key pair.
func testArchive(t *testing.T) *Archive {
	t.Helper()
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateX25519Identity()
	return &Archive{Store: st, Keys: &codec.Keys{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}}
}

func TestPushIdenticalAndConflict(t *testing.T) {
	a := testArchive(t)
	dir := t.TempDir()
	seg := filepath.Join(dir, "000000010000000000000007")
	data := make([]byte, 1<<20)
	rand.Read(data)
	os.WriteFile(seg, data, 0o600)

	res, err := a.Push(t.Context(), seg)
	if err != nil || res.AlreadyArchived {
		t.Fatalf("first push: %+v, %v", res, err)
	}
	res, err = a.Push(t.Context(), seg)
	if err != nil || !res.AlreadyArchived {
		t.Fatalf("identical re-push: %+v, %v; want accepted as already archived", res, err)
	}
	other := bytes.Clone(data)
	other[100] ^= 1
	os.WriteFile(seg, other, 0o600)
	if _, err := a.Push(t.Context(), seg); !errors.Is(err, ErrConflict) {
		t.Fatalf("different segment under the same name: %v, want ErrConflict", err)
	}
	entries, _ := a.Lookup(t.Context(), "000000010000000000000007")
	if len(entries) != 1 {
		t.Fatalf("conflicting push stored something: %+v", entries)
	}
	out := filepath.Join(dir, "fetched")
	if err := a.Fetch(t.Context(), "000000010000000000000007", out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("fetched segment differs from the first push")
	}
	if err := a.Fetch(t.Context(), "000000010000000000000008", out); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of a missing segment: %v, want ErrNotFound", err)
	}
	if _, err := a.Push(t.Context(), filepath.Join(dir, "fetched")); err == nil {
		t.Fatal("push of a file that is not WAL succeeded")
	}
	// A partial segment from wal-receive is served padded to the segment size.
	a.SegmentSize = 2 << 20
	if err := a.PutPartial(t.Context(), "000000010000000000000009", data[:1000]); err != nil {
		t.Fatal(err)
	}
	if err := a.Fetch(t.Context(), "000000010000000000000009", out); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if len(got) != 2<<20 || !bytes.Equal(got[:1000], data[:1000]) || !bytes.Equal(got[1000:], make([]byte, len(got)-1000)) {
		t.Fatalf("partial segment served as %d bytes", len(got))
	}
}

// A segment pushed from memory (mapped) and one streamed (larger than
// inMemoryMax) get the same key and read back the same.
func TestPushFromMemoryAndStreamedAgree(t *testing.T) {
	a := testArchive(t)
	data := make([]byte, 5<<20+3)
	rand.Read(data[:1<<20])
	fromMemory, stored, err := a.encodeBuffer(data)
	if err != nil {
		t.Fatal(err)
	}
	streamed, _, err := a.encodeStream(bytes.NewReader(data))
	if err != nil || streamed != fromMemory {
		t.Fatalf("streamed hash %s (%v), from memory %s", streamed, err, fromMemory)
	}
	r, err := codec.NewReader(bytes.NewReader(stored), true, a.Keys)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if back, err := io.ReadAll(r); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes, %v", len(back), err)
	}
}

// A segment truncated while it is mapped fails its push with an error
// that says so; the process does not crash on the fault.
func TestTruncatedWhileMappedIsAnError(t *testing.T) {
	a := testArchive(t)
	path := filepath.Join(t.TempDir(), "000000010000000000000001")
	if err := os.WriteFile(path, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, release, err := mapFile(f, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.encodeBuffer(data); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("encoding a truncated mapping: %v", err)
	}
}

// A prefetcher whose recovery is over (its spool removed with pg_wal's
// contents, or the data directory) stops: it fetches nothing and does not
// create the spool again.
func TestPrefetchStopsWhenItsSpoolIsGone(t *testing.T) {
	a := testArchive(t)
	a.SegmentSize = 1 << 20
	src := t.TempDir()
	for i := 1; i <= 4; i++ {
		seg := filepath.Join(src, fmt.Sprintf("0000000100000000000000%02X", i))
		os.WriteFile(seg, bytes.Repeat([]byte{byte(i)}, 1<<20), 0o600)
		if _, err := a.Push(t.Context(), seg); err != nil {
			t.Fatal(err)
		}
	}
	spool := filepath.Join(t.TempDir(), "pg_wal", ".drctl-prefetch")
	if err := a.Prefetch(t.Context(), "000000010000000000000001", spool, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spool); !os.IsNotExist(err) {
		t.Fatalf("the prefetcher created the removed spool again: %v", err)
	}
	// With the spool there, it fetches.
	os.MkdirAll(spool, 0o700)
	if err := a.Prefetch(t.Context(), "000000010000000000000001", spool, 3); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 4; i++ {
		if _, err := os.Stat(filepath.Join(spool, fmt.Sprintf("0000000100000000000000%02X", i))); err != nil {
			t.Fatalf("segment %d not prefetched: %v", i, err)
		}
	}
}

// Push-ahead stores the next ready segments and records them; a record is
// believed only for the same file and while the repository holds its
// object.
func TestPushAheadRecords(t *testing.T) {
	a := testArchive(t)
	walDir := filepath.Join(t.TempDir(), "pg_wal")
	os.MkdirAll(filepath.Join(walDir, "archive_status"), 0o700)
	var names []string
	for i := 1; i <= 5; i++ {
		name := fmt.Sprintf("0000000100000000000000%02X", i)
		data := make([]byte, 1<<20)
		rand.Read(data)
		os.WriteFile(filepath.Join(walDir, name), data, 0o600)
		os.WriteFile(filepath.Join(walDir, "archive_status", name+".ready"), nil, 0o600)
		names = append(names, name)
	}
	res, err := a.PushAhead(t.Context(), filepath.Join(walDir, names[0]), 3, nil)
	if err != nil || res.PushedAhead {
		t.Fatalf("first push: %+v %v", res, err)
	}
	for _, n := range names[1:4] {
		if _, err := os.Stat(filepath.Join(walDir, AheadDir, n)); err != nil {
			t.Fatalf("%s was not pushed ahead: %v", n, err)
		}
	}
	if _, err := os.Stat(filepath.Join(walDir, AheadDir, names[4])); err == nil {
		t.Fatal("pushed further ahead than asked")
	}
	// Answered from the record.
	res, err = a.PushAhead(t.Context(), filepath.Join(walDir, names[1]), 0, nil)
	if err != nil || !res.PushedAhead {
		t.Fatalf("a pushed-ahead segment: %+v %v", res, err)
	}
	// Another file under the name (its time differs): pushed for real,
	// refused as a conflict since the archive holds different content.
	p := filepath.Join(walDir, names[2])
	os.WriteFile(p, bytes.Repeat([]byte{1}, 1<<20), 0o600)
	if _, err := a.PushAhead(t.Context(), p, 0, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("a different file under a recorded name: %v, want ErrConflict", err)
	}
	// The record's object gone from the repository: pushed again.
	entries, _ := a.Lookup(t.Context(), names[3])
	if len(entries) != 1 {
		t.Fatalf("lookup %s: %v", names[3], entries)
	}
	if err := a.Store.Delete(t.Context(), entries[0].Key); err != nil {
		t.Fatal(err)
	}
	res, err = a.PushAhead(t.Context(), filepath.Join(walDir, names[3]), 0, nil)
	if err != nil || res.PushedAhead || res.AlreadyArchived {
		t.Fatalf("a record whose object is gone: %+v %v, want it pushed again", res, err)
	}
	// Records of segments before the one archived are forgotten.
	if _, err := os.Stat(filepath.Join(walDir, AheadDir, names[1])); !os.IsNotExist(err) {
		t.Fatalf("the record of %s outlived later pushes: %v", names[1], err)
	}
}

// A segment written while it is pushed is refused, not stored under a
// hash of other bytes.
func TestPushOfAFileChangedMeanwhileFails(t *testing.T) {
	a := testArchive(t)
	path := filepath.Join(t.TempDir(), "000000010000000000000002")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	a.beforeEncode = func() { os.WriteFile(path, bytes.Repeat([]byte{1}, 4<<20), 0o600) }
	if _, err := a.Push(t.Context(), path); err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("push of a file written meanwhile: %v", err)
	}
	if entries, _ := a.Lookup(t.Context(), "000000010000000000000002"); len(entries) != 0 {
		t.Fatalf("stored: %+v", entries)
	}
}
