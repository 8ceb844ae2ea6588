package s3store

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"golang.org/x/sync/semaphore"
)

// part is one multipart upload part, held in memory or spooled to an
// unlinked file. Either way its body can be re-read for retries.
type part struct {
	mem  []byte
	file *os.File
	n    int64
	crc  uint32
	cost int64 // bytes of the memory budget it holds
	last bool  // the stream ended in this part
}

func (p *part) body() io.ReadSeeker {
	if p.file != nil {
		return io.NewSectionReader(p.file, 0, p.n)
	}
	return bytes.NewReader(p.mem[:p.n])
}

func (p *part) crc32c() *string {
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], p.crc)
	return aws.String(base64.StdEncoding.EncodeToString(sum[:]))
}

// partSource cuts a stream into parts. Memory is bounded twice over: at
// most Concurrency parts upload while one is filled (slots), and the parts
// held in memory never exceed MemoryBudget bytes (mem); parts larger than
// MaxMemoryPart go to disk. Buffers are reused while the part size stays.
type partSource struct {
	opt   Options
	r     io.Reader
	slots *semaphore.Weighted
	mem   *semaphore.Weighted
	mu    sync.Mutex
	free  [][]byte
}

func newPartSource(opt Options, r io.Reader) *partSource {
	return &partSource{opt: opt, r: r,
		slots: semaphore.NewWeighted(int64(opt.Concurrency) + 1),
		mem:   semaphore.NewWeighted(opt.MemoryBudget)}
}

// fromBytes makes a part of data already read (the first part, read
// before the upload was known to need several).
func (ps *partSource) fromBytes(ctx context.Context, data []byte) (*part, error) {
	if err := ps.slots.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	cost := min(int64(cap(data)), ps.opt.MemoryBudget)
	if err := ps.mem.Acquire(ctx, cost); err != nil {
		ps.slots.Release(1)
		return nil, err
	}
	return &part{mem: data, n: int64(len(data)), crc: crc32.Checksum(data, castagnoli), cost: cost}, nil
}

// next reads the next part of at most size bytes; nil at the end of the
// stream. It waits while the slots or the memory budget are taken.
func (ps *partSource) next(ctx context.Context, size int64) (*part, error) {
	if err := ps.slots.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	var p *part
	var err error
	if size <= MaxMemoryPart {
		p, err = ps.readMemory(ctx, size)
	} else {
		p, err = ps.readSpooled(size)
	}
	if p == nil {
		ps.slots.Release(1)
	}
	return p, err
}

func (ps *partSource) readMemory(ctx context.Context, size int64) (*part, error) {
	cost := min(size, ps.opt.MemoryBudget)
	if err := ps.mem.Acquire(ctx, cost); err != nil {
		return nil, err
	}
	buf := ps.take(size)
	n, err := io.ReadFull(ps.r, buf)
	if n == 0 && errors.Is(err, io.EOF) {
		ps.give(buf)
		ps.mem.Release(cost)
		return nil, nil
	}
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		ps.give(buf)
		ps.mem.Release(cost)
		return nil, fmt.Errorf("read: %w", err)
	}
	return &part{mem: buf, n: int64(n), crc: crc32.Checksum(buf[:n], castagnoli), cost: cost, last: err != nil}, nil
}

func (ps *partSource) readSpooled(size int64) (*part, error) {
	f, err := os.CreateTemp(ps.opt.SpoolDir, "drctl-part-")
	if err != nil {
		return nil, fmt.Errorf("spool a part: %w", err)
	}
	// Unlinked at once: a killed upload leaves nothing behind.
	os.Remove(f.Name())
	h := crc32.New(castagnoli)
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ps.r, size))
	if err != nil || n == 0 {
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read into spooled part: %w", err)
		}
		return nil, nil
	}
	return &part{file: f, n: n, crc: h.Sum32(), last: n < size}, nil
}

// release returns what p held: its buffer, budget and slot.
func (ps *partSource) release(p *part) {
	if p.file != nil {
		p.file.Close()
	} else {
		ps.give(p.mem)
		ps.mem.Release(p.cost)
	}
	ps.slots.Release(1)
}

// take returns a buffer of length size, reusing a free one that fits;
// smaller free buffers are dropped: the part size only grows.
func (ps *partSource) take(size int64) []byte {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for len(ps.free) > 0 {
		b := ps.free[len(ps.free)-1]
		ps.free = ps.free[:len(ps.free)-1]
		if int64(cap(b)) >= size {
			return b[:size]
		}
	}
	return make([]byte, size)
}

func (ps *partSource) give(b []byte) {
	ps.mu.Lock()
	ps.free = append(ps.free, b)
	ps.mu.Unlock()
}

// close drops the free buffers.
func (ps *partSource) close() {
	ps.mu.Lock()
	ps.free = nil
	ps.mu.Unlock()
}
