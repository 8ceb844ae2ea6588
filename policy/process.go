package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/confcheck"
)

// Modes of a process: how it is recovered.
const (
	ModePITR    = "pitr"    // a base backup and the WAL after it
	ModeLogical = "logical" // a dump
)

// Process is a business process with recovery objectives.
type Process struct {
	Name        string
	Description string
	// Database is where the checks run after a restore (and, for logical
	// processes, the database whose dumps belong to the process).
	Database string
	Mode     string
	RPO      time.Duration
	RTO      time.Duration
	DrillMax time.Duration // a drill older than this does not count
	// DrillTimeout stops a drill that runs longer.
	DrillTimeout time.Duration
	Checks       []Check
	Line         int
}

// Check is a data assertion run after a restore.
type Check struct {
	Name   string
	SQL    string
	Expect Expect
	Line   int
}

// Expect is what a check's result must be.
type Expect struct {
	Kind string // "compare", "none", "some", "within_rpo"
	Op   string // >=, >, =, <=, <, != (compare)
	N    float64
	Text string // as written
}

// Defaults of a process.
const (
	DefaultDrillMaxAge  = 7 * 24 * time.Hour
	DefaultDrillTimeout = time.Hour
)

var processKeys = []string{"name", "description", "database", "mode", "rpo", "rto", "drill", "checks"}

// ParseProcesses reads the processes: key of a configuration file, every
// problem with its line.
func ParseProcesses(data []byte) ([]Process, []string) {
	p := &confcheck.Problems{}
	root := confcheck.Root(data, p)
	var out []Process
	if root == nil {
		return nil, p.List
	}
	for k, v := range confcheck.Pairs(root) {
		if k.Value == "processes" && confcheck.Seq(p, v, "processes") {
			names := map[string]int{}
			for _, n := range v.Content {
				if pr, ok := parseProcess(p, n); ok {
					if line, dup := names[pr.Name]; dup {
						p.Add(n, "process %q: the name is already used by the process at line %d", pr.Name, line)
					}
					names[pr.Name] = pr.Line
					out = append(out, pr)
				}
			}
		}
	}
	return out, p.List
}

func parseProcess(p *confcheck.Problems, n *yaml.Node) (Process, bool) {
	pr := Process{Line: n.Line, DrillMax: DefaultDrillMaxAge, DrillTimeout: DefaultDrillTimeout}
	if !confcheck.Mapping(p, n, "process", processKeys) {
		return pr, false
	}
	var rpoNode, rtoNode, checksNode *yaml.Node
	var badRPO, badRTO bool
	for k, v := range confcheck.Pairs(n) {
		switch k.Value {
		case "name":
			pr.Name = confcheck.Scalar(p, v, "name")
		case "description":
			pr.Description = confcheck.Scalar(p, v, "description")
		case "database":
			pr.Database = confcheck.Scalar(p, v, "database")
		case "mode":
			pr.Mode = confcheck.Scalar(p, v, "mode")
			if pr.Mode != ModePITR && pr.Mode != ModeLogical {
				p.Add(v, "mode %q: pitr (base backup + WAL) or logical (dumps)", pr.Mode)
			}
		case "rpo":
			pr.RPO, rpoNode, badRPO = durationOK(p, v, "rpo")
		case "rto":
			pr.RTO, rtoNode, badRTO = durationOK(p, v, "rto")
		case "drill":
			if confcheck.Mapping(p, v, "drill", []string{"max_age", "timeout"}) {
				for dk, dv := range confcheck.Pairs(v) {
					if dk.Value == "max_age" {
						pr.DrillMax = confcheck.Duration(p, dv, "drill max_age")
					} else {
						pr.DrillTimeout = confcheck.Duration(p, dv, "drill timeout")
					}
				}
			}
		case "checks":
			checksNode = v
		}
	}
	where := fmt.Sprintf("process %q", pr.Name)
	switch {
	case pr.Name == "":
		p.Add(n, "process: a name is required")
	case !catalog.ValidJobName(pr.Name):
		p.Add(n, "%s: a name is lowercase letters, digits and dashes ([a-z0-9-]+, at most 63)", where)
	}
	if pr.Mode == "" {
		p.Add(n, "%s: a mode is required (pitr or logical)", where)
	}
	if pr.Database == "" {
		p.Add(n, "%s: a database is required (where the checks run after a restore)", where)
	}
	if !badRPO && (rpoNode == nil || pr.RPO <= 0) {
		p.Add(orNode(rpoNode, n), "%s: rpo (how much may be lost, e.g. 1m) is required and positive", where)
	}
	if !badRTO && (rtoNode == nil || pr.RTO <= 0) {
		p.Add(orNode(rtoNode, n), "%s: rto (how long a restore may take, e.g. 10m) is required and positive", where)
	}
	if pr.DrillMax <= 0 || pr.DrillTimeout <= 0 {
		p.Add(n, "%s: drill max_age and timeout must be positive", where)
	}
	if pr.DrillTimeout < pr.RTO {
		p.Add(n, "%s: drill timeout %s is shorter than the RTO %s: a drill would stop before it could show the RTO missed", where, pr.DrillTimeout, pr.RTO)
	}
	if checksNode != nil && confcheck.Seq(p, checksNode, "checks") {
		names := map[string]bool{}
		for _, cn := range checksNode.Content {
			c, ok := parseCheck(p, cn)
			if !ok {
				continue
			}
			if names[c.Name] {
				p.Add(cn, "%s: check %q given twice", where, c.Name)
			}
			names[c.Name] = true
			pr.Checks = append(pr.Checks, c)
		}
	}
	return pr, true
}

// durationOK reads a duration and says whether it was unreadable (and
// so already reported).
func durationOK(p *confcheck.Problems, n *yaml.Node, what string) (time.Duration, *yaml.Node, bool) {
	before := p.Count()
	d := confcheck.Duration(p, n, what)
	return d, n, p.Count() > before
}

func orNode(a, b *yaml.Node) *yaml.Node {
	if a != nil {
		return a
	}
	return b
}

func parseCheck(p *confcheck.Problems, n *yaml.Node) (Check, bool) {
	c := Check{Line: n.Line}
	if !confcheck.Mapping(p, n, "check", []string{"name", "sql", "expect"}) {
		return c, false
	}
	var expectNode *yaml.Node
	for k, v := range confcheck.Pairs(n) {
		switch k.Value {
		case "name":
			c.Name = confcheck.Scalar(p, v, "check name")
		case "sql":
			c.SQL = confcheck.Scalar(p, v, "check sql")
		case "expect":
			expectNode = v
		}
	}
	if c.Name == "" || c.SQL == "" || expectNode == nil {
		p.Add(n, "check: name, sql and expect are required")
		return c, false
	}
	e, err := ParseExpect(confcheck.Scalar(p, expectNode, "expect"))
	if err != nil {
		p.Add(expectNode, "check %q: %v", c.Name, err)
		return c, false
	}
	c.Expect = e
	return c, true
}

var compareRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^(>=|<=|!=|=|>|<)\s*(-?[0-9]+(\.[0-9]+)?)$`) })

// ParseExpect reads an expectation: ">= 1000", "= 0", "< 5", "none",
// "some" or "within_rpo".
func ParseExpect(s string) (Expect, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "none", "some", "within_rpo":
		return Expect{Kind: s, Text: s}, nil
	}
	m := compareRe().FindStringSubmatch(s)
	if m == nil {
		return Expect{}, fmt.Errorf("expect %q: want a comparison with a number (>= N, = N, < N...), none, some or within_rpo", s)
	}
	n, _ := strconv.ParseFloat(m[2], 64)
	return Expect{Kind: "compare", Op: m[1], N: n, Text: s}, nil
}

// Holds reports whether v satisfies a comparison.
func (e Expect) Holds(v float64) bool {
	switch e.Op {
	case ">=":
		return v >= e.N
	case "<=":
		return v <= e.N
	case ">":
		return v > e.N
	case "<":
		return v < e.N
	case "=":
		return v == e.N
	case "!=":
		return v != e.N
	}
	return false
}
