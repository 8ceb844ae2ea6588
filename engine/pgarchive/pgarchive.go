// Package pgarchive reads pg_dump's custom archive format (-Fc) as a
// stream: the header and table of contents, then the data blocks, with
// bounded memory. drctl uses it to show what a dump holds and how big each
// table's data is, to choose the entries of a selective restore, and to
// pass pg_restore only the data blocks it will read, so that pg_restore
// cannot finish before drctl has checked the whole stored object.
//
// The archive comes from the repository: every length and count is
// checked, and no string is kept that drctl does not need.
package pgarchive

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Section is the part of a restore an entry belongs to.
type Section int

// pg_dump's sections (teSection).
const (
	SectionNone     Section = 1
	SectionPreData  Section = 2
	SectionData     Section = 3
	SectionPostData Section = 4
)

func (s Section) String() string {
	switch s {
	case SectionPreData:
		return "pre-data"
	case SectionData:
		return "data"
	case SectionPostData:
		return "post-data"
	}
	return "none"
}

// Entry is one item of the table of contents.
type Entry struct {
	ID        int     `json:"id"`
	Desc      string  `json:"type"` // TABLE, TABLE DATA, INDEX, FK CONSTRAINT...
	Namespace string  `json:"schema,omitempty"`
	Tag       string  `json:"name"`
	Owner     string  `json:"owner,omitempty"`
	Section   Section `json:"-"`
	Deps      []int   `json:"dependencies,omitempty"`
	// Copy: the entry's data is loaded by a COPY ... FROM stdin statement
	// (its data is rows, never SQL).
	Copy bool `json:"-"`
	// Defn is the SQL of ACL entries (GRANT and REVOKE); empty for others.
	Defn string `json:"-"`
	// HasData: the entry has a data block (TABLE DATA, BLOBS).
	HasData bool `json:"-"`
	// DataBytes is the size of its data, once the blocks have been read
	// (Reader.ReadData): a table's rows as COPY text (pg_dump's end-of-data
	// line not counted), large objects' bytes; compressed sizes when the
	// archive is compressed.
	DataBytes int64 `json:"data_bytes"`
}

// Header is the archive's header.
type Header struct {
	Version       string    `json:"format_version"` // e.g. 1.14
	Compression   string    `json:"compression"`    // none, gzip, lz4, zstd
	Created       time.Time `json:"created"`
	Database      string    `json:"database"`
	ServerVersion string    `json:"server_version"`
	DumpVersion   string    `json:"pg_dump_version"`
}

// Limits on what an archive may declare.
const (
	maxEntries = 10_000_000
	maxDeps    = 1_000_000
	maxString  = 1 << 30 // a function body or a view's definition
	keepString = 1 << 16 // longest name kept (longer ones are refused)
	maxGrants  = 1 << 20 // longest ACL entry kept
	maxKept    = 1 << 29 // memory the table of contents may take (some 2 million entries)
)

// copyEnd is what pg_dump writes after a table's COPY rows.
const copyEnd = "\\.\n\n\n"

// Block types of the custom format.
const (
	blockData = 1
	blockLOs  = 3
)

// Reader reads an archive from a stream. Everything it reads is also
// written to Pass (when set) except data blocks that Skip says to leave out.
type Reader struct {
	r       *bufio.Reader
	version int // major*10000 + minor*100 + rev
	intSize int
	offSize int
	// Pass receives the archive as read, minus skipped data blocks.
	Pass io.Writer
	// Header and Entries are set by ReadTOC.
	Header  Header
	Entries []Entry
	byID    map[int]int
	// Skip, when set, decides whether the data block of an entry is left
	// out of Pass.
	Skip func(e *Entry) bool
	pass bool   // copy what is read to Pass
	buf  []byte // for reading through what is not kept
	num  [9]byte
	kept int64  // bytes of names, grants and entries kept
	tail []byte // the last bytes of the data read through
}

// NewReader reads an archive from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), pass: true}
}

// ErrFormat marks an archive drctl cannot read.
var ErrFormat = errors.New("not a readable pg_dump custom archive")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// Entry returns the entry with the given dump id.
func (a *Reader) Entry(id int) (*Entry, bool) {
	i, ok := a.byID[id]
	if !ok {
		return nil, false
	}
	return &a.Entries[i], true
}

func (a *Reader) readFull(b []byte) error {
	if _, err := io.ReadFull(a.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return formatErr("the archive ends early")
		}
		return err
	}
	if a.pass && a.Pass != nil {
		if _, err := a.Pass.Write(b); err != nil {
			return &PassError{err}
		}
	}
	return nil
}

// PassError is a failure to write to Pass (pg_restore went away).
type PassError struct{ Err error }

func (e *PassError) Error() string { return e.Err.Error() }
func (e *PassError) Unwrap() error { return e.Err }

func (a *Reader) byte1() (byte, error) {
	var b [1]byte
	err := a.readFull(b[:])
	return b[0], err
}

// int reads pg_dump's integer: a sign byte, then intSize bytes, least
// significant first.
func (a *Reader) int() (int64, error) {
	buf := a.num[:1+a.intSize]
	if err := a.readFull(buf); err != nil {
		return 0, err
	}
	var v uint64
	for i := a.intSize; i >= 1; i-- {
		v = v<<8 | uint64(buf[i])
	}
	if v > 1<<31-1 {
		return 0, formatErr("integer out of range") // pg_restore's int would overflow
	}
	if buf[0] != 0 {
		return -int64(v), nil
	}
	return int64(v), nil
}

// str reads a string, kept (names) or dropped; null reports a NULL one.
func (a *Reader) str(keep bool) (s string, null bool, err error) {
	limit := int64(0)
	if keep {
		limit = keepString
	}
	return a.strUpTo(limit)
}

// strUpTo reads a string, keeping it when it is at most limit bytes long
// and refusing it when longer; limit 0 reads it through and drops it.
func (a *Reader) strUpTo(limit int64) (s string, null bool, err error) {
	n, err := a.int()
	if err != nil {
		return "", false, err
	}
	if n == -1 {
		return "", true, nil
	}
	if n < 0 || n > maxString {
		return "", false, formatErr("string length %d", n)
	}
	if limit == 0 {
		return "", false, a.discard(n)
	}
	if n > limit {
		return "", false, formatErr("a name or grant of %d bytes", n)
	}
	if a.kept += 2 * n; a.kept > maxKept {
		return "", false, formatErr("a table of contents over %d MiB", maxKept>>20)
	}
	b := make([]byte, n)
	if err := a.readFull(b); err != nil {
		return "", false, err
	}
	return string(b), false, nil
}

// Printable replaces control characters in a name from the archive for
// display: a hostile dump must not write escapes to a terminal or a log.
// Names are kept as they are for matching.
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

// discard reads n bytes, passing them on when passing.
func (a *Reader) discard(n int64) error {
	if a.buf == nil {
		a.buf = make([]byte, 32<<10)
	}
	for n > 0 {
		b := a.buf[:min(n, int64(len(a.buf)))]
		if err := a.readFull(b); err != nil {
			return err
		}
		n -= int64(len(b))
		if len(b) >= len(copyEnd) {
			a.tail = append(a.tail[:0], b[len(b)-len(copyEnd):]...)
		} else {
			a.tail = append(a.tail, b...)
			a.tail = a.tail[max(0, len(a.tail)-len(copyEnd)):]
		}
	}
	return nil
}

func (a *Reader) atLeast(major, minor int) bool { return a.version >= major*10000+minor*100 }

// ReadTOC reads the header and the table of contents.
func (a *Reader) ReadTOC() error {
	magic := make([]byte, 5)
	if err := a.readFull(magic); err != nil {
		return err
	}
	if string(magic) != "PGDMP" {
		return formatErr("no PGDMP magic (a plain SQL dump, or not a dump)")
	}
	var v [3]byte
	if err := a.readFull(v[:2]); err != nil {
		return err
	}
	if v[0] != 1 || v[1] < 12 {
		return formatErr("archive version %d.%d (drctl reads 1.12 and later: pg_dump 9.5+)", v[0], v[1])
	}
	b, err := a.byte1()
	if err != nil {
		return err
	}
	v[2] = b
	a.version = int(v[0])*10000 + int(v[1])*100 + int(v[2])
	a.Header.Version = fmt.Sprintf("%d.%d", v[0], v[1])
	if v[1] > 16 {
		return formatErr("archive version %s is newer than drctl knows (up to 1.16)", a.Header.Version)
	}
	is, err := a.byte1()
	if err != nil {
		return err
	}
	os, err := a.byte1()
	if err != nil {
		return err
	}
	// pg_dump writes C ints (4 bytes) and 64-bit offsets; pg_restore adds
	// integers up in a C int, so wider ones would read differently there.
	if is != 4 || (os != 8 && os != 4) {
		return formatErr("integer size %d, offset size %d (pg_dump writes 4 and 8)", is, os)
	}
	a.intSize, a.offSize = int(is), int(os)
	format, err := a.byte1()
	if err != nil {
		return err
	}
	if format != 1 { // archCustom
		return formatErr("archive format %d is not custom (-Fc)", format)
	}
	if a.atLeast(1, 15) {
		alg, err := a.byte1()
		if err != nil {
			return err
		}
		a.Header.Compression = map[byte]string{0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}[alg]
		if a.Header.Compression == "" {
			return formatErr("compression algorithm %d", alg)
		}
	} else {
		level, err := a.int()
		if err != nil {
			return err
		}
		a.Header.Compression = "none"
		if level != 0 {
			a.Header.Compression = "gzip"
		}
	}
	var tm [7]int64
	for i := range tm {
		if tm[i], err = a.int(); err != nil {
			return err
		}
	}
	if tm[4] >= 0 && tm[4] < 12 && tm[3] >= 1 && tm[3] <= 31 && tm[5] >= 0 && tm[5] < 10000 {
		a.Header.Created = time.Date(int(tm[5])+1900, time.Month(tm[4]+1), int(tm[3]), int(tm[2]), int(tm[1]), int(tm[0]), 0, time.UTC)
	}
	if a.Header.Database, _, err = a.str(true); err != nil {
		return err
	}
	if a.Header.ServerVersion, _, err = a.str(true); err != nil {
		return err
	}
	if a.Header.DumpVersion, _, err = a.str(true); err != nil {
		return err
	}
	count, err := a.int()
	if err != nil {
		return err
	}
	if count < 0 || count > maxEntries {
		return formatErr("%d table of contents entries", count)
	}
	a.byID = make(map[int]int, min(count, 1<<16))
	a.Entries = make([]Entry, 0, min(count, 1<<16))
	for i := int64(0); i < count; i++ {
		e, err := a.entry()
		if err != nil {
			return fmt.Errorf("table of contents entry %d: %w", i+1, err)
		}
		if _, dup := a.byID[e.ID]; dup {
			return formatErr("entry id %d appears twice", e.ID)
		}
		a.byID[e.ID] = len(a.Entries)
		a.Entries = append(a.Entries, e)
	}
	return nil
}

func (a *Reader) entry() (Entry, error) {
	var e Entry
	id, err := a.int()
	if err != nil {
		return e, err
	}
	if id <= 0 || id > 1<<31-1 {
		return e, formatErr("entry id %d", id)
	}
	e.ID = int(id)
	if a.kept += 256; a.kept > maxKept { // the entry, and what choosing from it costs
		return e, formatErr("a table of contents over %d MiB", maxKept>>20)
	}
	hadDumper, err := a.int()
	if err != nil {
		return e, err
	}
	e.HasData = hadDumper != 0
	for range 2 { // table oid, oid
		if _, _, err := a.str(false); err != nil {
			return e, err
		}
	}
	if e.Tag, _, err = a.str(true); err != nil {
		return e, err
	}
	if e.Desc, _, err = a.str(true); err != nil {
		return e, err
	}
	section, err := a.int()
	if err != nil {
		return e, err
	}
	if section < 1 || section > 4 {
		return e, formatErr("section %d", section)
	}
	e.Section = Section(section)
	defnLimit := int64(0)
	if e.Desc == "ACL" || e.Desc == "DEFAULT ACL" {
		defnLimit = maxGrants // the grants name the roles they need
	}
	if e.Defn, _, err = a.strUpTo(defnLimit); err != nil {
		return e, err
	}
	if _, _, err := a.str(false); err != nil { // dropStmt
		return e, err
	}
	copyStmt, _, err := a.strUpTo(keepString)
	if err != nil {
		return e, err
	}
	e.Copy = strings.HasPrefix(copyStmt, "COPY ") && strings.HasSuffix(copyStmt, " FROM stdin;\n")
	if e.Namespace, _, err = a.str(true); err != nil {
		return e, err
	}
	if _, _, err := a.str(false); err != nil { // tablespace
		return e, err
	}
	if a.atLeast(1, 14) {
		if _, _, err := a.str(false); err != nil { // table access method
			return e, err
		}
	}
	if a.atLeast(1, 16) {
		if _, err := a.int(); err != nil { // relkind
			return e, err
		}
	}
	if e.Owner, _, err = a.str(true); err != nil {
		return e, err
	}
	if _, _, err := a.str(false); err != nil { // "false": WITH OIDS
		return e, err
	}
	for {
		dep, null, err := a.str(true)
		if err != nil {
			return e, err
		}
		if null {
			break
		}
		d, err := strconv.Atoi(strings.TrimSpace(dep))
		if err != nil || d <= 0 {
			return e, formatErr("dependency %q", dep)
		}
		if len(e.Deps) >= maxDeps {
			return e, formatErr("more than %d dependencies", maxDeps)
		}
		if a.kept += 16; a.kept > maxKept {
			return e, formatErr("a table of contents over %d MiB", maxKept>>20)
		}
		e.Deps = append(e.Deps, d)
	}
	// The custom format's extra TOC data: whether there is a data block
	// (pg_restore believes this flag, not hadDumper), and where.
	flag, err := a.byte1()
	if err != nil {
		return e, err
	}
	off := make([]byte, a.offSize)
	if err := a.readFull(off); err != nil {
		return e, err
	}
	const posNotSet, posSet, noData = 1, 2, 3
	if flag != posNotSet && flag != posSet && flag != noData {
		return e, formatErr("entry %d: data offset flag %d", e.ID, flag)
	}
	if (flag == noData) == e.HasData {
		return e, formatErr("entry %d (%s) says both that it has data and that it has none", e.ID, Printable(e.Desc))
	}
	// Only table data and large objects carry data, in the data section:
	// what pg_dump writes, and what pg_restore reads under every option
	// drctl gives it. Anything else would let the two disagree on which
	// blocks pg_restore reads.
	if e.HasData && !((e.Desc == "TABLE DATA" || e.Desc == "BLOBS") && e.Section == SectionData) {
		return e, formatErr("entry %d: a %s in section %s with data", e.ID, Printable(e.Desc), e.Section)
	}
	// Table data as SQL (pg_dump --inserts) would run whatever it holds,
	// before the whole object is checked; drctl's dumps load rows by COPY.
	if e.HasData && e.Desc == "TABLE DATA" && !e.Copy {
		return e, formatErr("entry %d: table data without a COPY statement (a pg_dump --inserts dump), which drctl does not restore", e.ID)
	}
	return e, nil
}

// ReadData reads the data blocks to the end of the archive, setting each
// entry's DataBytes, and passes on the blocks Skip does not leave out.
func (a *Reader) ReadData() error {
	seen := map[int]bool{}
	for {
		typ, err := a.r.ReadByte()
		if errors.Is(err, io.EOF) {
			a.pass = true
			return nil
		}
		if err != nil {
			return err
		}
		a.pass = false // the block's header is passed once its entry is known
		id, err := a.int()
		if err != nil {
			return err
		}
		e, ok := a.Entry(int(id))
		if !ok || !e.HasData {
			return formatErr("data block for entry %d, which has no data", id)
		}
		if seen[e.ID] {
			return formatErr("a second data block for entry %d", id)
		}
		seen[e.ID] = true
		if want := map[string]byte{"TABLE DATA": blockData, "BLOBS": blockLOs}[e.Desc]; typ != want {
			return formatErr("a block of type %d for %s entry %d", typ, Printable(e.Desc), id)
		}
		a.pass = a.Skip == nil || !a.Skip(e)
		if a.pass && a.Pass != nil {
			hdr := make([]byte, 2+a.intSize)
			hdr[0] = typ
			putInt(hdr[1:], id, a.intSize)
			if _, err := a.Pass.Write(hdr); err != nil {
				return &PassError{err}
			}
		}
		switch typ {
		case blockData:
			a.tail = a.tail[:0]
			n, err := a.chunks()
			if err != nil {
				return fmt.Errorf("data of %s %s: %w", Printable(e.Desc), Printable(e.Tag), err)
			}
			// pg_dump ends COPY data with an end-of-data line: the rows
			// alone are the table's size.
			if a.Header.Compression == "none" && string(a.tail) == copyEnd {
				n -= int64(len(copyEnd))
			}
			e.DataBytes = n
		case blockLOs:
			for {
				oid, err := a.int()
				if err != nil {
					return err
				}
				if oid == 0 {
					break
				}
				n, err := a.chunks()
				if err != nil {
					return fmt.Errorf("large object %d: %w", oid, err)
				}
				e.DataBytes += n
			}
		default:
			return formatErr("block type %d", typ)
		}
	}
}

// chunks reads length-prefixed chunks up to the zero length.
func (a *Reader) chunks() (int64, error) {
	var total int64
	for {
		n, err := a.int()
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
		if n < 0 || n > maxString {
			return total, formatErr("chunk length %d", n)
		}
		if err := a.discard(n); err != nil {
			return total, err
		}
		total += n
	}
}

func putInt(b []byte, v int64, size int) {
	if v < 0 {
		b[0] = 1
		v = -v
	}
	for i := 1; i <= size; i++ {
		b[i] = byte(v)
		v >>= 8
	}
}
