package logical

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
)

// spill keeps what is written to it — the dump's table of contents, read
// before pg_restore starts — in memory up to a point, then in a temporary
// file (DRCTL_SPOOL_DIR), so that a schema of any size costs bounded memory.
type spill struct {
	hash  hash.Hash // of everything written
	mem   bytes.Buffer
	file  *os.File
	size  int64
	limit int64 // refuse beyond this many bytes
}

const (
	spillMemory = 8 << 20
	spillLimit  = 4 << 30
)

func (s *spill) Write(p []byte) (int, error) {
	if s.size+int64(len(p)) > s.limit {
		return 0, fmt.Errorf("the dump's table of contents is over %d GiB", s.limit>>30)
	}
	s.size += int64(len(p))
	if s.hash == nil {
		s.hash = sha256.New()
	}
	s.hash.Write(p)
	if s.file == nil && s.mem.Len()+len(p) <= spillMemory {
		return s.mem.Write(p)
	}
	if s.file == nil {
		f, err := os.CreateTemp(os.Getenv("DRCTL_SPOOL_DIR"), "drctl-toc-")
		if err != nil {
			return 0, fmt.Errorf("spool the dump's table of contents: %w", err)
		}
		os.Remove(f.Name()) // unlinked: gone when closed, whatever happens
		s.file = f
	}
	return s.file.Write(p)
}

// sum is the hex SHA-256 of what was written.
func (s *spill) sum() string {
	if s.hash == nil {
		s.hash = sha256.New()
	}
	return hex.EncodeToString(s.hash.Sum(nil))
}

// reader replays what was written.
func (s *spill) reader() (io.Reader, error) {
	if s.file == nil {
		return bytes.NewReader(s.mem.Bytes()), nil
	}
	if _, err := s.file.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return io.MultiReader(bytes.NewReader(s.mem.Bytes()), s.file), nil
}

func (s *spill) Close() error {
	if s.file != nil {
		return s.file.Close()
	}
	return nil
}
