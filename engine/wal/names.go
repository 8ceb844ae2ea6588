// Package wal archives and fetches PostgreSQL write-ahead log: segment
// naming, wal-push (archive_command), wal-fetch with prefetch
// (restore_command), streaming from a replication slot, and the
// continuity checks that find gaps before an incident does.
package wal

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultSegmentSize is PostgreSQL's default wal_segment_size.
const DefaultSegmentSize = 16 << 20

// Prefix is where the WAL archive lives in a repository.
const Prefix = "wal/"

// LSN is a WAL location.
type LSN uint64

// ParseLSN reads "16/B374D848".
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// Segment identifies one WAL segment file.
type Segment struct {
	Timeline uint32
	No       uint64 // segment number: LSN / segment size
}

func segmentsPerID(segSize int64) uint64 { return 0x100000000 / uint64(segSize) }

// SegmentOf is the segment holding lsn on timeline tli.
func SegmentOf(tli uint32, lsn LSN, segSize int64) Segment {
	return Segment{Timeline: tli, No: uint64(lsn) / uint64(segSize)}
}

// Name is the segment's file name, 000000010000000000000003.
func (s Segment) Name(segSize int64) string {
	per := segmentsPerID(segSize)
	return fmt.Sprintf("%08X%08X%08X", s.Timeline, s.No/per, s.No%per)
}

// StartLSN is the first location in the segment.
func (s Segment) StartLSN(segSize int64) LSN { return LSN(s.No * uint64(segSize)) }

// Next is the following segment on the same timeline.
func (s Segment) Next() Segment { return Segment{s.Timeline, s.No + 1} }

// The names PostgreSQL gives WAL files, checked by hand: wal-push runs
// once per segment, and compiling regular expressions at start-up cost it
// more than the checks ever do.

// upperHex reports whether s is made of digits and A-F only.
func upperHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// isSegment: 24 hex digits, as 000000010000000A000000FF.
func isSegment(name string) bool { return len(name) == 24 && upperHex(name) }

// isHistory: a timeline history file, as 00000002.history.
func isHistory(name string) bool {
	return len(name) == 16 && upperHex(name[:8]) && name[8:] == ".history"
}

// isBackupHistory: a backup history file, as <segment>.00000028.backup.
func isBackupHistory(name string) bool {
	return len(name) == 40 && isSegment(name[:24]) && name[24] == '.' && upperHex(name[25:33]) && name[33:] == ".backup"
}

// isOldPartial: the old timeline's last segment, archived at a promotion.
func isOldPartial(name string) bool {
	return len(name) == 32 && isSegment(name[:24]) && name[24:] == ".partial"
}

// ParseSegmentName parses a segment file name.
func ParseSegmentName(name string, segSize int64) (Segment, bool) {
	if !isSegment(name) {
		return Segment{}, false
	}
	tli, _ := strconv.ParseUint(name[0:8], 16, 32)
	hi, _ := strconv.ParseUint(name[8:16], 16, 32)
	lo, _ := strconv.ParseUint(name[16:24], 16, 32)
	per := segmentsPerID(segSize)
	if lo >= per {
		return Segment{}, false
	}
	return Segment{Timeline: uint32(tli), No: hi*per + lo}, true
}

// IsSegmentName reports whether name is a WAL segment file name.
func IsSegmentName(name string) bool { return isSegment(name) }

// IsArchivable reports whether name is a file archive_command may be
// given: a segment, a timeline history or a backup history file, or the
// .partial segment a promotion leaves of the old timeline.
func IsArchivable(name string) bool {
	return isSegment(name) || isHistory(name) || isBackupHistory(name) || isOldPartial(name)
}

// IsHistoryName reports whether name is a timeline history file name.
func IsHistoryName(name string) bool { return isHistory(name) }

// HistoryName is the history file of timeline tli.
func HistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }
