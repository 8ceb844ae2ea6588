package pgarchive_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/drctl/drctl/engine/pgarchive"
)

// A dump comes from the repository: the reader must refuse what it does
// not understand, never panic, never allocate what a length claims, and
// pass on exactly the bytes it read.
func FuzzArchive(f *testing.F) {
	for _, path := range fixtures {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, false)
		f.Add(data, true)
		f.Add(data[:len(data)/2], false)
	}
	f.Fuzz(func(t *testing.T, data []byte, skipAll bool) {
		var passed bytes.Buffer
		src := bytes.NewReader(data)
		a := pgarchive.NewReader(src)
		a.Pass = &passed
		if skipAll {
			a.Skip = func(*pgarchive.Entry) bool { return true }
		}
		err := a.ReadTOC()
		if err == nil {
			err = a.ReadData()
		}
		if err != nil || skipAll {
			return
		}
		if !bytes.Equal(passed.Bytes(), data) {
			t.Fatalf("read %d bytes without error, passed on %d that differ", len(data), passed.Len())
		}
	})
}
