// Package confcheck reads parts of drctl's YAML configuration file as
// nodes, so that every problem is reported with its line (the daemon's
// jobs, the recovery objectives' processes) instead of stopping at the
// first one.
package confcheck

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/drctl/drctl/engine/schedule"
)

// Problems collects what is wrong, each with its line.
type Problems struct{ List []string }

// Add records a problem at n's line.
func (p *Problems) Add(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.List = append(p.List, fmt.Sprintf("line %d: %s", line, fmt.Sprintf(format, args...)))
}

// Count is how many problems were found so far.
func (p *Problems) Count() int { return len(p.List) }

// Root parses a document and returns its top-level mapping (nil for an
// empty document).
func Root(data []byte, p *Problems) *yaml.Node {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		p.List = append(p.List, err.Error())
		return nil
	}
	if len(doc.Content) == 0 {
		return nil
	}
	if doc.Content[0].Kind != yaml.MappingNode {
		p.Add(doc.Content[0], "the file must be a mapping of settings")
		return nil
	}
	return doc.Content[0]
}

// Pairs iterates a mapping node's keys and values.
func Pairs(m *yaml.Node) func(func(*yaml.Node, *yaml.Node) bool) {
	return func(yield func(*yaml.Node, *yaml.Node) bool) {
		for i := 0; i+1 < len(m.Content); i += 2 {
			if !yield(m.Content[i], m.Content[i+1]) {
				return
			}
		}
	}
}

// Mapping checks that n is a mapping of known, unrepeated keys.
func Mapping(p *Problems, n *yaml.Node, what string, allowed []string) bool {
	if n.Kind != yaml.MappingNode {
		p.Add(n, "%s: want a mapping", what)
		return false
	}
	seen := map[string]bool{}
	for k := range Pairs(n) {
		if !slices.Contains(allowed, k.Value) {
			p.Add(k, "%s: unknown key %q (known: %s)", what, k.Value, strings.Join(allowed, ", "))
		}
		if seen[k.Value] {
			p.Add(k, "%s: %q given twice", what, k.Value)
		}
		seen[k.Value] = true
	}
	return true
}

// Scalar is n's single value.
func Scalar(p *Problems, n *yaml.Node, what string) string {
	if n.Kind != yaml.ScalarNode {
		p.Add(n, "%s: want a single value", what)
		return ""
	}
	return n.Value
}

// Duration reads a duration: 90s, 15m, 2h, 14d.
func Duration(p *Problems, n *yaml.Node, what string) time.Duration {
	d, err := schedule.ParseDuration(Scalar(p, n, what))
	if err != nil {
		p.Add(n, "%s: %v", what, err)
	}
	return d
}

// Integer reads a whole number in [lo, hi].
func Integer(p *Problems, n *yaml.Node, what string, lo, hi int) int {
	var v int
	if err := n.Decode(&v); err != nil || v < lo || v > hi {
		p.Add(n, "%s: want a whole number from %d to %d", what, lo, hi)
	}
	return v
}

// Seq checks that n is a list.
func Seq(p *Problems, n *yaml.Node, what string) bool {
	if n.Kind != yaml.SequenceNode {
		p.Add(n, "%s: want a list", what)
		return false
	}
	return true
}
