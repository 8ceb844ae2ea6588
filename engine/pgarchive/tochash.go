package pgarchive

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
)

// TOCHash computes, from an archive written to it as pg_dump produces it,
// the SHA-256 of the archive's header and table of contents: the part that
// holds every SQL statement pg_restore runs. It reads only that part; the
// rest of what is written is ignored, so it can sit beside a backup's
// stream at no cost.
type TOCHash struct {
	pw      *io.PipeWriter
	done    chan struct{}
	sum     string
	err     error
	stopped bool
}

var errTOCRead = errors.New("table of contents read")

// NewTOCHash starts reading what will be written to it; call Sum or Close.
func NewTOCHash() *TOCHash {
	pr, pw := io.Pipe()
	h := &TOCHash{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		hash := sha256.New()
		r := NewReader(pr)
		r.Pass = hash
		if err := r.ReadTOC(); err != nil {
			h.err = err
		} else {
			h.sum = hex.EncodeToString(hash.Sum(nil))
		}
		pr.CloseWithError(errTOCRead) // later writes are dropped
	}()
	return h
}

// Write never fails: once the table of contents has been read, the rest
// is dropped.
func (h *TOCHash) Write(p []byte) (int, error) {
	if !h.stopped {
		if _, err := h.pw.Write(p); err != nil {
			h.stopped = true
		}
	}
	return len(p), nil
}

// Sum ends the input and returns the hash, or why the table of contents
// could not be read.
func (h *TOCHash) Sum() (string, error) {
	h.Close()
	return h.sum, h.err
}

// Close ends the input and waits for the reader.
func (h *TOCHash) Close() {
	h.pw.Close()
	<-h.done
}
