package codec

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testKeys(t *testing.T) *Keys {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return &Keys{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}
}

// payload is half random, half repetitive, like database pages.
func payload(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{9})
	r.Read(b[:n/2])
	for i := n / 2; i < n; i++ {
		b[i] = byte(i % 7)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	keys := testKeys(t)
	for _, size := range []int{0, 1, frameSize - 1, frameSize, 3*frameSize + 5} {
		for _, mode := range []string{"write", "readfrom"} {
			for _, enc := range []*Keys{keys, {}} {
				want := payload(size)
				var stored bytes.Buffer
				w, err := NewWriter(&stored, enc, Options{Concurrency: 3})
				if err != nil {
					t.Fatal(err)
				}
				if mode == "write" {
					for off := 0; off < len(want); off += 100003 {
						w.Write(want[off:min(off+100003, len(want))])
					}
				} else if _, err := w.ReadFrom(bytes.NewReader(want)); err != nil {
					t.Fatal(err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if w.RawBytes() != int64(size) {
					t.Fatalf("RawBytes = %d, want %d", w.RawBytes(), size)
				}
				r, err := NewReader(&stored, enc.Encrypted(), keys)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(r)
				r.Close()
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("size %d %s encrypted=%v: read back %d bytes, %v", size, mode, enc.Encrypted(), len(got), err)
				}
			}
		}
	}
}

// EncodeBuffer writes what NewWriter writes: the same zstd frames (the
// very bytes, unencrypted), readable back by NewReader.
func TestEncodeBufferMatchesTheWriter(t *testing.T) {
	keys := testKeys(t)
	for _, size := range []int{0, 1, frameSize - 1, frameSize, 3*frameSize + 5} {
		want := payload(size)
		for i, enc := range []*Keys{keys, {}, {}} {
			window := 0
			if i == 2 {
				window = 512 << 10 // WAL's
			}
			got, err := EncodeBuffer(want, enc, Options{Concurrency: 3, Window: window})
			if err != nil {
				t.Fatal(err)
			}
			if !enc.Encrypted() {
				var streamed bytes.Buffer
				w, _ := NewWriter(&streamed, enc, Options{Concurrency: 2, Window: window})
				w.Write(want)
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, streamed.Bytes()) {
					t.Fatalf("size %d: EncodeBuffer wrote %d bytes, the writer %d", size, len(got), streamed.Len())
				}
			}
			r, err := NewReader(bytes.NewReader(got), enc.Encrypted(), keys)
			if err != nil {
				t.Fatal(err)
			}
			back, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(back, want) {
				t.Fatalf("size %d encrypted=%v: read back %d bytes, %v", size, enc.Encrypted(), len(back), err)
			}
		}
	}
}

type failingWriter struct{ after int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.after -= len(p); f.after < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

// A destination that fails stops the writer with its error, and no
// goroutine is left behind (TestMain checks).
func TestDestinationFailure(t *testing.T) {
	w, err := NewWriter(&failingWriter{after: 1 << 20}, &Keys{}, Options{Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	data := payload(frameSize)
	var werr error
	for i := 0; i < 20 && werr == nil; i++ {
		_, werr = w.Write(data)
	}
	if werr == nil {
		werr = w.Close()
	} else {
		w.Abort()
	}
	if werr == nil || werr.Error() != "disk full" {
		t.Fatalf("error = %v, want the destination's", werr)
	}
}

func TestCorruptionDetected(t *testing.T) {
	keys := testKeys(t)
	var stored bytes.Buffer
	w, _ := NewWriter(&stored, keys, Options{})
	w.Write(payload(2 * frameSize))
	w.Close()
	b := stored.Bytes()
	b[len(b)/2] ^= 1
	r, err := NewReader(bytes.NewReader(b), true, keys)
	if err == nil {
		_, err = io.ReadAll(r)
		r.Close()
	}
	if err == nil {
		t.Fatal("a flipped byte decoded without error")
	}
}

// A writer that cannot be built leaves no goroutine behind (TestMain's
// goleak check fails the package otherwise).
func TestFramedWriterFailureLeaksNothing(t *testing.T) {
	if _, err := newFramedWriter(io.Discard, zstd.EncoderLevel(100), 0, 4); err == nil {
		t.Fatal("an unknown zstd level was accepted")
	}
	// The third encoder fails: the two made before it must not linger.
	made := 0
	_, err := newFramedWriterWith(io.Discard, 4, func() (*zstd.Encoder, error) {
		if made++; made == 3 {
			return nil, errors.New("no memory for an encoder")
		}
		return zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	})
	if err == nil {
		t.Fatal("a failing encoder went unnoticed")
	}
	if err := goleak.Find(); err != nil {
		t.Fatal(err)
	}
}
