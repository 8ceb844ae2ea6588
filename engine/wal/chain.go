package wal

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Switch is where a timeline branched off its parent.
type Switch struct {
	Parent uint32
	At     LSN
}

// History reads the archived timeline history files: for each timeline, the
// timeline it branched from and where. Reading them needs the identity.
func (a *Archive) History(ctx context.Context, entries []Entry) (map[uint32]Switch, error) {
	out := map[uint32]Switch{}
	tmp, err := os.MkdirTemp("", "drctl-history-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	for _, e := range entries {
		if !IsHistoryName(e.Name) || e.Partial {
			continue
		}
		tli, _ := strconv.ParseUint(e.Name[:8], 16, 32)
		path := filepath.Join(tmp, e.Name)
		if err := a.Fetch(ctx, e.Name, path); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		sw, err := parseHistory(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.Key, err)
		}
		out[uint32(tli)] = sw
	}
	return out, nil
}

// parseHistory returns the last line of a history file: the direct parent.
func parseHistory(data []byte) (Switch, error) {
	var last Switch
	found := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return last, fmt.Errorf("malformed history line %q", line)
		}
		parent, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return last, fmt.Errorf("malformed history line %q", line)
		}
		at, err := ParseLSN(f[1])
		if err != nil {
			return last, err
		}
		last, found = Switch{Parent: uint32(parent), At: at}, true
	}
	if !found {
		return last, fmt.Errorf("empty history file")
	}
	return last, nil
}

// ChainReport says whether the WAL a base backup needs is all archived.
type ChainReport struct {
	OK bool `json:"ok"`
	// Timelines recovery would follow, from the backup's to the newest.
	Timelines []uint32 `json:"timelines"`
	// Missing segments, by name, in recovery order.
	Missing []string `json:"missing,omitempty"`
	// Conflicts are names archived twice with different content (two
	// primaries wrote to one repository): wal-fetch refuses them.
	Conflicts []string `json:"conflicts,omitempty"`
	// Restorable is false when WAL the backup needs to become consistent
	// is missing: the backup cannot be restored at all.
	Restorable bool `json:"restorable"`
	// WindowFrom..WindowTo is the range of LSNs a restore can reach.
	WindowFrom string `json:"window_from_lsn"`
	WindowTo   string `json:"window_to_lsn"`
	// LastSegment is the newest archived segment on the chain.
	LastSegment string `json:"last_segment"`
}

// Chain checks WAL continuity for a backup whose WAL starts at start and
// must reach stop to be consistent: every segment from its start to the
// newest archived one, along the newest timeline that descends from the
// backup's, following history files across promotions.
func Chain(entries []Entry, history map[uint32]Switch, start Segment, stop LSN, segSize int64) *ChainReport {
	have := map[Segment]bool{}
	newest := map[uint32]uint64{}
	hashes := map[string]string{}
	var conflicts []string
	for _, e := range entries {
		if !e.Partial {
			if h, seen := hashes[e.Name]; seen && h != e.Hash {
				conflicts = append(conflicts, e.Name)
			}
			hashes[e.Name] = e.Hash
		}
		s, ok := ParseSegmentName(e.Name, segSize)
		if !ok || e.Partial {
			continue
		}
		have[s] = true
		if n, seen := newest[s.Timeline]; !seen || s.No > n {
			newest[s.Timeline] = s.No
		}
	}
	path := timelinePath(start.Timeline, history)
	rep := &ChainReport{Timelines: path, WindowFrom: stop.String(), Restorable: true}
	stopSeg := uint64(stop-1) / uint64(segSize)
	cur := start
	var windowTo LSN
	gap := false
	for i, tli := range path {
		cur.Timeline = tli
		// end is one past the last segment needed on this timeline.
		var end uint64
		if i+1 < len(path) {
			// The segment holding the switch point is read from the new timeline.
			end = uint64(history[path[i+1]].At) / uint64(segSize)
		} else if n, ok := newest[tli]; ok && n >= cur.No {
			end = n + 1
		} else {
			end = cur.No
		}
		if i == 0 && end <= stopSeg {
			end = stopSeg + 1 // the backup's own WAL is needed whatever else is there
		}
		for ; cur.No < end; cur = cur.Next() {
			if have[cur] {
				rep.LastSegment = cur.Name(segSize)
				if !gap {
					windowTo = LSN((cur.No + 1) * uint64(segSize))
				}
				continue
			}
			rep.Missing = append(rep.Missing, cur.Name(segSize))
			if !gap {
				gap = true
				if cur.No <= stopSeg && cur.Timeline == start.Timeline {
					rep.Restorable = false
				}
			}
		}
	}
	if rep.Restorable {
		rep.WindowTo = max(windowTo, stop).String()
	}
	rep.Conflicts = conflicts
	rep.OK = len(rep.Missing) == 0 && len(conflicts) == 0
	return rep
}

// timelinePath is the chain from tli to the newest timeline descending
// from it (what recovery_target_timeline = 'latest' follows).
func timelinePath(tli uint32, history map[uint32]Switch) []uint32 {
	var candidates []uint32
	for t := range history {
		candidates = append(candidates, t)
	}
	sort.Slice(candidates, func(i, j int) bool { return candidates[i] > candidates[j] })
	for _, t := range candidates {
		if t <= tli {
			break
		}
		var chain []uint32
		for c := t; ; {
			chain = append([]uint32{c}, chain...)
			if c == tli {
				return chain
			}
			sw, ok := history[c]
			if !ok || sw.Parent >= c {
				break
			}
			c = sw.Parent
		}
	}
	return []uint32{tli}
}
