package codec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// frameSize is the plaintext of one zstd frame. Independent frames
// compress on every core at once, so one big relation file or WAL segment
// does not serialize on a single compressor; a zstd stream may hold any
// number of frames, and zstd -d reads them as one.
const frameSize = 4 << 20

// framedWriter compresses fixed-size chunks into independent zstd frames
// on a pool of workers and writes the frames, in order, to out. Memory is
// bounded: at most workers + 2 chunks are in flight.
type framedWriter struct {
	out     io.Writer
	buf     []byte
	jobs    chan *frameJob
	order   chan *frameJob
	done    chan struct{}
	free    chan []byte // plaintext chunks to reuse
	outs    chan []byte // compressed frames to reuse
	workers sync.WaitGroup

	mu   sync.Mutex
	werr error // first error writing to out
	n    int64 // frames submitted
}

type frameJob struct {
	in, out []byte
	ready   chan struct{}
}

func newFramedWriter(out io.Writer, level zstd.EncoderLevel, window, workers int) (*framedWriter, error) {
	return newFramedWriterWith(out, workers, func() (*zstd.Encoder, error) { return newFrameEncoder(level, window) })
}

// newFrameEncoder makes one frame's encoder, with the window asked for
// (0: the frame).
func newFrameEncoder(level zstd.EncoderLevel, window int) (*zstd.Encoder, error) {
	if window <= 0 || window > frameSize {
		window = frameSize
	}
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true), zstd.WithWindowSize(window))
}

func newFramedWriterWith(out io.Writer, workers int, newEncoder func() (*zstd.Encoder, error)) (*framedWriter, error) {
	w := &framedWriter{
		out:   out,
		jobs:  make(chan *frameJob, workers),
		order: make(chan *frameJob, workers+1),
		done:  make(chan struct{}),
		free:  make(chan []byte, workers+2),
		outs:  make(chan []byte, workers+2),
	}
	// Every encoder first, then the goroutines: a failure half-way must not
	// leave workers waiting on a writer nobody will close.
	encs := make([]*zstd.Encoder, 0, workers)
	for i := 0; i < workers; i++ {
		enc, err := newEncoder()
		if err != nil {
			for _, e := range encs {
				e.Close()
			}
			return nil, err
		}
		encs = append(encs, enc)
	}
	for _, enc := range encs {
		w.workers.Add(1)
		go func() {
			defer w.workers.Done()
			defer enc.Close()
			for j := range w.jobs {
				var dst []byte
				select {
				case dst = <-w.outs:
				default:
				}
				j.out = enc.EncodeAll(j.in, dst[:0])
				close(j.ready)
			}
		}()
	}
	go w.writeFrames()
	w.buf = w.chunk()
	return w, nil
}

func (w *framedWriter) chunk() []byte {
	select {
	case b := <-w.free:
		return b[:0]
	default:
		return make([]byte, 0, frameSize)
	}
}

// writeFrames writes finished frames in submission order. After an error
// it keeps draining, so producers never block on a dead writer.
func (w *framedWriter) writeFrames() {
	defer close(w.done)
	for j := range w.order {
		<-j.ready
		if w.err() == nil {
			if _, err := w.out.Write(j.out); err != nil {
				w.mu.Lock()
				w.werr = err
				w.mu.Unlock()
			}
		}
		select {
		case w.free <- j.in:
		default:
		}
		select {
		case w.outs <- j.out:
		default:
		}
	}
}

func (w *framedWriter) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.werr
}

func (w *framedWriter) submit() error {
	if err := w.err(); err != nil {
		return err
	}
	j := &frameJob{in: w.buf, ready: make(chan struct{})}
	w.order <- j
	w.jobs <- j
	w.n++
	w.buf = w.chunk()
	return nil
}

func (w *framedWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), frameSize-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p, written = p[k:], written+k
		if len(w.buf) == frameSize {
			if err := w.submit(); err != nil {
				return written, err
			}
		}
	}
	return written, w.err()
}

// ReadFrom fills chunks straight from r.
func (w *framedWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		n, err := r.Read(w.buf[len(w.buf):frameSize])
		w.buf = w.buf[:len(w.buf)+n]
		total += int64(n)
		if len(w.buf) == frameSize {
			if serr := w.submit(); serr != nil {
				return total, serr
			}
		}
		if errors.Is(err, io.EOF) {
			return total, w.err()
		}
		if err != nil {
			return total, err
		}
	}
}

// Close compresses what is left (an empty stream still gets one frame),
// waits for every frame to be written and stops the workers.
func (w *framedWriter) Close() error {
	var err error
	if len(w.buf) > 0 || w.n == 0 {
		err = w.submit()
	}
	w.stop()
	if err != nil {
		return err
	}
	return w.err()
}

// abort stops the workers without caring for the output.
func (w *framedWriter) abort() {
	w.mu.Lock()
	if w.werr == nil {
		w.werr = errors.New("aborted")
	}
	w.mu.Unlock()
	w.stop()
}

func (w *framedWriter) stop() {
	close(w.jobs)
	close(w.order)
	<-w.done
	w.workers.Wait()
}

// EncodeBuffer compresses and encrypts data held in memory into the very
// bytes NewWriter would write for it (frames of frameSize, then age), but
// compresses the frames straight from data, in parallel, without copying
// them into chunks first: a WAL segment is read once and touched once.
// data may be a mapped file: a fault reading it (the file truncated under
// the mapping) is an error, not a crash.
func EncodeBuffer(data []byte, keys *Keys, opt Options) ([]byte, error) {
	level := zstd.SpeedFastest
	if opt.Level > 1 {
		level = zstd.EncoderLevelFromZstd(opt.Level)
	}
	frames := max(1, (len(data)+frameSize-1)/frameSize)
	workers := opt.Concurrency
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, frames)
	out := make([][]byte, frames)
	var next atomic.Int64
	errs := make(chan error, workers)
	for range workers {
		go func() {
			debug.SetPanicOnFault(true)
			defer func() {
				if r := recover(); r != nil {
					errs <- MemoryFault(r)
				}
			}()
			enc, err := newFrameEncoder(level, opt.Window)
			if err != nil {
				errs <- err
				return
			}
			defer enc.Close()
			for {
				i := int(next.Add(1) - 1)
				if i >= frames {
					errs <- nil
					return
				}
				out[i] = enc.EncodeAll(data[i*frameSize:min(len(data), (i+1)*frameSize)], nil)
			}
		}()
	}
	var err error
	for range workers {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return nil, err
	}
	size := 0
	for _, f := range out {
		size += len(f)
	}
	if !keys.Encrypted() {
		return slices.Concat(out...), nil
	}
	// age adds a header of a few hundred bytes and 16 bytes per 64 KiB.
	buf := bytes.NewBuffer(make([]byte, 0, size+size/4096+4096))
	aw, err := age.Encrypt(buf, keys.Recipients...)
	if err != nil {
		return nil, fmt.Errorf("age encrypt: %w", err)
	}
	for _, f := range out {
		if _, err := aw.Write(f); err != nil {
			return nil, err
		}
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// MemoryFault turns the panic of a fault reading mapped memory (see
// debug.SetPanicOnFault) into an error, and panics again with anything else.
func MemoryFault(r any) error {
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		return fmt.Errorf("input unreadable: %v (file truncated while mapped?)", f)
	}
	panic(r)
}
