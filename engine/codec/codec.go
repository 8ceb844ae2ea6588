// Package codec builds the compression and encryption stages of drctl's
// streams: zstd, then age. Both are standard formats: a stored object
// decodes with `age -d -i KEY | zstd -d`.
package codec

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/drctl/drctl/catalog"
)

// Keys holds the age recipients backups are encrypted to and the
// identities that decrypt them. Either side may be empty: a backup host
// needs only recipients, a restore only identities.
type Keys struct {
	Recipients []age.Recipient
	// RecipientStrings are the recipients as written, for the manifest.
	RecipientStrings []string
	Identities       []age.Identity
}

// Encrypted reports whether streams written with these keys are encrypted.
func (k *Keys) Encrypted() bool { return k != nil && len(k.Recipients) > 0 }

// Encryption is how a manifest records streams written with these keys.
func (k *Keys) Encryption() catalog.Encryption {
	if !k.Encrypted() {
		return catalog.Encryption{Method: "none"}
	}
	return catalog.Encryption{Method: "age", Recipients: k.RecipientStrings}
}

// CanDecrypt reports whether these keys can read objects written with e.
func (k *Keys) CanDecrypt(e catalog.Encryption) bool {
	return !e.Encrypted() || (k != nil && len(k.Identities) > 0)
}

// LoadRecipients parses a recipients file: one age public key a line, as
// `age-keygen -y` prints; blank lines and # comments are skipped.
func LoadRecipients(path string) ([]age.Recipient, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("recipients file: %w", err)
	}
	defer f.Close()
	var recips []age.Recipient
	var strs []string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if strings.HasPrefix(s, "AGE-SECRET-KEY-") {
			return nil, nil, fmt.Errorf("recipients file %s line %d: this is a secret key (identity); give the public key that `age-keygen -y` prints", path, line)
		}
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			return nil, nil, fmt.Errorf("recipients file %s line %d: not an age X25519 recipient (age1...)", path, line)
		}
		recips = append(recips, r)
		strs = append(strs, s)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("recipients file %s: %w", path, err)
	}
	if len(recips) == 0 {
		return nil, nil, fmt.Errorf("recipients file %s holds no age recipient", path)
	}
	return recips, strs, nil
}

// LoadIdentities parses an identity file as `age-keygen` writes it.
func LoadIdentities(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	defer f.Close()
	ids, err := ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return ids, nil
}

// ParseIdentities reads age identities as age-keygen writes them.
func ParseIdentities(r io.Reader) ([]age.Identity, error) {
	ids, err := age.ParseIdentities(r)
	if err != nil {
		// age's message may quote the line; never echo key material.
		return nil, errors.New("not an age identity file (as age-keygen writes)")
	}
	return ids, nil
}

// Options tune the encoder.
type Options struct {
	// Level is the zstd level: 1 fastest .. 4 best (klauspost's levels).
	Level int
	// Concurrency is the number of zstd frames compressed at once
	// (default: GOMAXPROCS).
	Concurrency int
	// Window is the zstd window in bytes, at most a frame (default: the
	// frame, 4 MiB). A short-lived process compressing one WAL segment
	// gives 512 KiB: allocating a fresh encoder's 4 MiB history costs it
	// more than the compression, and WAL gains nothing from the longer
	// reach (0.2-0.4% larger output on pgbench's).
	Window int
}

// Writer compresses, then encrypts, into the destination.
type Writer struct {
	zw  *framedWriter
	aw  io.WriteCloser // nil when not encrypting
	raw int64
}

// NewWriter returns a writer whose output, written to dst, is
// zstd(plaintext) encrypted to keys' recipients (or only compressed when
// there are none). Close must be called to flush both stages.
func NewWriter(dst io.Writer, keys *Keys, opt Options) (*Writer, error) {
	w := &Writer{}
	next := dst
	if keys.Encrypted() {
		aw, err := age.Encrypt(dst, keys.Recipients...)
		if err != nil {
			return nil, fmt.Errorf("age encrypt: %w", err)
		}
		w.aw = aw
		next = aw
	}
	level := zstd.SpeedFastest
	if opt.Level > 1 {
		level = zstd.EncoderLevelFromZstd(opt.Level)
	}
	conc := opt.Concurrency
	if conc <= 0 {
		conc = runtime.GOMAXPROCS(0)
	}
	zw, err := newFramedWriter(next, level, opt.Window, conc)
	if err != nil {
		return nil, err
	}
	w.zw = zw
	return w, nil
}

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.zw.Write(p)
	w.raw += int64(n)
	return n, err
}

// ReadFrom lets io.Copy hand the encoder large blocks.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	n, err := w.zw.ReadFrom(r)
	w.raw += n
	return n, err
}

// RawBytes is how many plaintext bytes were written.
func (w *Writer) RawBytes() int64 { return w.raw }

// Close flushes zstd, then age (which otherwise drops its last chunk).
func (w *Writer) Close() error {
	err := w.zw.Close()
	if w.aw != nil {
		if aerr := w.aw.Close(); err == nil {
			err = aerr
		}
	}
	return err
}

// Abort releases the encoder without producing a valid stream.
func (w *Writer) Abort() { w.zw.abort() }

// ErrNoRecipients refuses to write a backup nobody meant to leave unencrypted.
var ErrNoRecipients = errors.New("no age recipients: give --recipients-file or DRCTL_AGE_RECIPIENTS_FILE, or --no-encryption to store the backup unencrypted")

// ErrNoIdentity means an encrypted object was read without an identity.
var ErrNoIdentity = errors.New("backup is encrypted: give the age identity with --identity-file or DRCTL_AGE_IDENTITY_FILE")

// NewReader decrypts (when encrypted) and decompresses src.
func NewReader(src io.Reader, encrypted bool, keys *Keys) (io.ReadCloser, error) {
	if encrypted {
		if keys == nil || len(keys.Identities) == 0 {
			return nil, ErrNoIdentity
		}
		ar, err := age.Decrypt(src, keys.Identities...)
		if err != nil {
			var noMatch *age.NoIdentityMatchError
			if errors.As(err, &noMatch) {
				return nil, fmt.Errorf("decrypt: the identity does not match any recipient of this backup (wrong key)")
			}
			return nil, fmt.Errorf("decrypt: %w", err)
		}
		src = ar
	}
	zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	return zstdReadCloser{zr}, nil
}

type zstdReadCloser struct{ d *zstd.Decoder }

func (z zstdReadCloser) Read(p []byte) (int, error) { return z.d.Read(p) }
func (z zstdReadCloser) Close() error               { z.d.Close(); return nil }
