package wal

import (
	"regexp"
	"strings"
	"testing"
)

// Names, LSNs, keys and history files come from the repository and from
// PostgreSQL: parsers must refuse what they do not understand, never panic,
// and what they accept must round-trip.

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "0/16B3748", "FFFFFFFF/FFFFFFFF", "1/", "/1", "x/y", "00000001/00000002", "-1/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			return
		}
		again, err := ParseLSN(l.String())
		if err != nil || again != l {
			t.Fatalf("%q -> %v -> %q: %v", s, l, l.String(), err)
		}
	})
}

var (
	segmentOracle    = regexp.MustCompile(`^[0-9A-F]{24}$`)
	historyOracle    = regexp.MustCompile(`^[0-9A-F]{8}\.history$`)
	archivableOracle = regexp.MustCompile(`^([0-9A-F]{24}|[0-9A-F]{8}\.history|[0-9A-F]{24}\.[0-9A-F]{8}\.backup|[0-9A-F]{24}\.partial)$`)
)

func FuzzSegmentName(f *testing.F) {
	for _, s := range []string{"000000010000000000000003", "0000000100000001000000FF", "00000002.history", "0000000g.history", "00000002.historx", "000000010000000000000003.0000002G.backup", "000000010000000000000003-00000028.backup", "00000001000000000000000a.partial", "000000010000000000000003.00000028.backup", "000000010000000000000005.partial", "00000001000000000000000G", ""} {
		f.Add(s, int64(16<<20))
	}
	f.Fuzz(func(t *testing.T, name string, segSize int64) {
		if segSize < 1<<20 || segSize > 1<<30 || segSize&(segSize-1) != 0 {
			segSize = 16 << 20
		}
		// The hand-written checks accept exactly what these patterns do.
		if got, want := IsArchivable(name), archivableOracle.MatchString(name); got != want {
			t.Fatalf("IsArchivable(%q) = %v, the pattern says %v", name, got, want)
		}
		if got, want := IsHistoryName(name), historyOracle.MatchString(name); got != want {
			t.Fatalf("IsHistoryName(%q) = %v, the pattern says %v", name, got, want)
		}
		if got, want := IsSegmentName(name), segmentOracle.MatchString(name); got != want {
			t.Fatalf("IsSegmentName(%q) = %v, the pattern says %v", name, got, want)
		}
		s, ok := ParseSegmentName(name, segSize)
		if !ok {
			return
		}
		if got := s.Name(segSize); !strings.EqualFold(got, name) {
			t.Fatalf("%q parsed to %+v, named %q", name, s, got)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"wal/000000010000000000000003.0123456789abcdef0123456789abcdef.zst.age", "wal/000000010000000000000003.partial.zst", "wal/00000002.history.0123456789abcdef0123456789abcdef.zst.age", "wal/x.sig", "backups/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		e, ok := ParseKey(key)
		if !ok {
			return
		}
		if e.Key != key || !IsArchivable(e.Name) || (!e.Partial && len(e.Hash) != hashLen) || !strings.HasPrefix(key, Prefix+e.Name+".") {
			t.Fatalf("%q parsed to %+v", key, e)
		}
	})
}

func FuzzParseHistory(f *testing.F) {
	f.Add([]byte("1\t0/3000000\tno recovery target specified\n"))
	f.Add([]byte("1\t0/3000000\tbefore 2026-11-26\n2\t0/5000000\tat restore point \"x\"\n"))
	f.Add([]byte(""))
	f.Add([]byte("\n\n#\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		parseHistory(data)
	})
}
