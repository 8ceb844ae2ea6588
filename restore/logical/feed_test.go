package logical

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// fakeObject yields size bytes, then fails its check; it records how much
// pg_restore (the writer) had been given when the check ran.
type fakeObject struct {
	r           io.Reader
	w           *bytes.Buffer
	seenAtCheck int
}

var errDamaged = errors.New("SHA-256 does not match the manifest")

func (f *fakeObject) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *fakeObject) Check() error {
	f.seenAtCheck = f.w.Len()
	return errDamaged
}

// pg_restore never sees the last holdback bytes of an object whose check
// fails: it cannot reach the end of the archive, so it cannot commit.
func TestFeedHoldsBackTheEnd(t *testing.T) {
	const size = 5 << 20
	var w bytes.Buffer
	obj := &fakeObject{r: bytes.NewReader(make([]byte, size)), w: &w}
	if err := feed(&w, obj); !errors.Is(err, errDamaged) {
		t.Fatalf("feed: %v", err)
	}
	// The README promises the last MiB: a fixed bound, not holdback's value.
	if obj.seenAtCheck > size-1<<20 || w.Len() > size-1<<20 {
		t.Fatalf("pg_restore had %d bytes when the check ran, %d in the end, of %d: the last MiB must be held back",
			obj.seenAtCheck, w.Len(), size)
	}
}
