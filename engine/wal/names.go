// Package wal archives and fetches PostgreSQL write-ahead log: segment
// naming, wal-push (archive_command), wal-fetch with prefetch
// (restore_command), streaming from a replication slot, and the
// continuity checks that find gaps before an incident does.
package wal

import (
	"fmt"
	"regexp"
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

var (
	segmentRe = regexp.MustCompile(`^[0-9A-F]{24}$`)
	historyRe = regexp.MustCompile(`^[0-9A-F]{8}\.history$`)
	backupRe  = regexp.MustCompile(`^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$`)
	// The old timeline's last segment, archived at a promotion.
	oldPartialRe = regexp.MustCompile(`^[0-9A-F]{24}\.partial$`)
)

// ParseSegmentName parses a segment file name.
func ParseSegmentName(name string, segSize int64) (Segment, bool) {
	if !segmentRe.MatchString(name) {
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
func IsSegmentName(name string) bool { return segmentRe.MatchString(name) }

// IsArchivable reports whether name is a file archive_command may be
// given: a segment, a timeline history or a backup history file, or the
// .partial segment a promotion leaves of the old timeline.
func IsArchivable(name string) bool {
	return segmentRe.MatchString(name) || historyRe.MatchString(name) || backupRe.MatchString(name) || oldPartialRe.MatchString(name)
}

// IsHistoryName reports whether name is a timeline history file name.
func IsHistoryName(name string) bool { return historyRe.MatchString(name) }

// HistoryName is the history file of timeline tli.
func HistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }
