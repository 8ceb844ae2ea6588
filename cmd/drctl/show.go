package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/pgarchive"
	rlogical "github.com/drctl/drctl/restore/logical"
)

// shown is `drctl show --json`.
type shown struct {
	backupSummary
	// Snapshot is when the data is from: a dump's start; for a base
	// backup, its window says.
	Snapshot     *time.Time            `json:"snapshot_time,omitempty"`
	ServerInfo   catalog.Server        `json:"server"`
	Compression  string                `json:"compression"`
	Objects      []catalog.Object      `json:"objects"`
	Encryption   catalog.Encryption    `json:"encryption"`
	Tool         catalog.Tool          `json:"tool"`
	Signature    string                `json:"signature"`
	Verification *catalog.Verification `json:"verification"`
	// Drill is the newest restore drill of the backup in the last 90
	// days: null when none.
	Drill    *drillSummary `json:"drill"`
	Contents *contents     `json:"contents,omitempty"`
}

type contents struct {
	pgarchive.Header
	Entries int             `json:"entries"`
	Tables  []tableContents `json:"tables"`
	Schemas []schemaObjects `json:"schemas"`
}

type tableContents struct {
	Schema    string `json:"schema"`
	Name      string `json:"name"`
	DataBytes int64  `json:"data_bytes"`
}

type schemaObjects struct {
	Name    string            `json:"name"`
	Objects []pgarchive.Entry `json:"objects"`
}

func newShowCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var asJSON, withContents bool
	var q catalog.Query
	cmd := &cobra.Command{
		Use:   "show ID|latest",
		Short: "Describe a backup: what, when, how big, its signature, verification and restore window; with --contents, the dump's objects and sizes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch q.Kind {
			case "", catalog.KindLogical, catalog.KindPhysical:
			default:
				return &exitCodeError{2, fmt.Errorf("--kind %q: want logical or physical", q.Kind)}
			}
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			verifier, err := s.verifier()
			if err != nil {
				return err
			}
			if withContents && q.Kind == "" {
				q.Kind = catalog.KindLogical // latest --contents: the newest dump
			}
			m, err := catalog.Resolve(cmd.Context(), st, args[0], q)
			if err != nil {
				return err
			}
			out := shown{backupSummary: summarize(m), ServerInfo: m.Server, Compression: m.Compression, Objects: m.Objects, Encryption: m.Encryption, Tool: m.Tool}
			if m.Kind == catalog.KindLogical {
				out.Snapshot = &m.StartTime
			}
			if verifier != nil {
				_, who, err := catalog.LoadVerified(cmd.Context(), st, m.ID, verifier)
				if err != nil {
					return err
				}
				out.Signature = "verified (" + who + ")"
			} else if out.Signature, err = catalog.SignatureState(cmd.Context(), st, m.ID); err != nil {
				return err
			}
			drills, err := catalog.LastDrills(cmd.Context(), st, time.Now().Add(-drillHistory), verifier)
			if err != nil {
				return err
			}
			if d, ok := drills[m.ID]; ok {
				out.Drill = summarizeDrill(d, true)
			}
			if out.Verification, err = catalog.LastVerification(cmd.Context(), st, m.ID); err != nil {
				return err
			}
			if m.Kind == catalog.KindPhysical {
				windows, err := restoreWindows(cmd, s, st, []*catalog.Manifest{m})
				if err != nil {
					return err
				}
				out.Window = windows[m.ID]
			}
			if withContents {
				keys, err := s.decryptKeys()
				if err != nil {
					return err
				}
				bar := newProgressBar(stderr, !asJSON)
				header, entries, err := rlogical.Contents(cmd.Context(), st, m, keys, bar.update)
				bar.finish()
				if err != nil {
					return err
				}
				out.Contents = summarizeContents(header, entries)
			}
			if asJSON {
				return writeJSON(stdout, out)
			}
			printShown(stdout, m, &out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&withContents, "contents", false, "read the dump (a logical backup) and list its objects by schema, with each table's data size; the stored object is checked on the way (not recorded as a verification: drctl verify does that)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	cmd.Flags().StringVar(&q.Kind, "kind", "", "with latest: the newest backup of this kind (logical or physical)")
	cmd.Flags().StringVar(&q.Database, "database", "", "with latest: the newest backup of this database")
	return cmd
}

// hidden are entries of pg_restore's own bookkeeping.
var hidden = map[string]bool{"ENCODING": true, "STDSTRINGS": true, "SEARCHPATH": true, "DATABASE": true, "DATABASE PROPERTIES": true}

func summarizeContents(h *pgarchive.Header, entries []pgarchive.Entry) *contents {
	c := &contents{Header: *h, Tables: []tableContents{}, Schemas: []schemaObjects{}}
	data := map[string]int64{}
	for _, e := range entries {
		if e.Desc == "TABLE DATA" {
			data[e.Namespace+"\x00"+e.Tag] = e.DataBytes
		}
	}
	bySchema := map[string][]pgarchive.Entry{}
	for _, e := range entries {
		if hidden[e.Desc] {
			continue
		}
		c.Entries++
		if e.Desc == "TABLE" {
			c.Tables = append(c.Tables, tableContents{Schema: e.Namespace, Name: e.Tag, DataBytes: data[e.Namespace+"\x00"+e.Tag]})
		}
		e.Deps = nil
		bySchema[e.Namespace] = append(bySchema[e.Namespace], e)
	}
	names := make([]string, 0, len(bySchema))
	for n := range bySchema {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.Schemas = append(c.Schemas, schemaObjects{Name: n, Objects: bySchema[n]})
	}
	sort.Slice(c.Tables, func(i, j int) bool {
		if c.Tables[i].Schema != c.Tables[j].Schema {
			return c.Tables[i].Schema < c.Tables[j].Schema
		}
		return c.Tables[i].Name < c.Tables[j].Name
	})
	return c
}

func printShown(w io.Writer, m *catalog.Manifest, s *shown) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("backup", "%s", m.ID)
	kind := "logical (pg_dump of one database; restore --into DSN)"
	if m.Kind == catalog.KindPhysical {
		kind = "physical (base backup of the whole cluster; restore --to DIR, with WAL for a point in time)"
	}
	row("kind", "%s", kind)
	if m.Database != "" {
		row("database", "%s", m.Database)
	}
	row("server", "PostgreSQL %s%s", m.Server.Version, func() string {
		if m.Server.SystemIdentifier != "" {
			return ", system identifier " + m.Server.SystemIdentifier
		}
		return ""
	}())
	row("taken", "%s to %s (%s)", m.StartTime.Format(time.RFC3339), m.EndTime.Format(time.RFC3339), m.EndTime.Sub(m.StartTime).Round(time.Millisecond))
	if m.Kind == catalog.KindLogical {
		row("snapshot", "%s (the data is as of the dump's start)", m.StartTime.Format(time.RFC3339))
	}
	what := "dump"
	if m.Kind == catalog.KindPhysical {
		what = "tar and manifest"
	}
	row("size", "%s of %s, %s stored (%s); %d stored object(s)", humanBytes(m.RawSize()), what, humanBytes(m.StoredSize()), m.Compression, len(m.Objects))
	if m.Server.DatabaseSize > 0 {
		row("database size", "%s when the backup started", humanBytes(m.Server.DatabaseSize))
	}
	if len(m.Labels) > 0 {
		row("labels", "%s", formatLabels(m.Labels))
	}
	if m.Encryption.Method == "none" {
		row("encryption", "none")
	} else {
		row("encryption", "%s, %d recipient(s): %s", m.Encryption.Method, len(m.Encryption.Recipients), strings.Join(m.Encryption.Recipients, ", "))
	}
	row("signature", "%s", s.Signature)
	if v := s.Verification; v != nil && v.OK {
		row("verified", "%s (%s ago)", v.Time.Format(time.RFC3339), time.Since(v.Time).Round(time.Minute))
	} else if v != nil {
		row("verified", "FAILED at %s", v.Time.Format(time.RFC3339))
	} else {
		row("verified", "never (drctl verify %s)", m.ID)
	}
	if d := s.Drill; d != nil {
		row("drill", "%s by drill %s of %s, %s restore (%s ago)", map[bool]string{true: "passed", false: "FAILED"}[d.Passed], d.DrillID, d.Process,
			(time.Duration(d.Seconds * float64(time.Second))).Round(100*time.Millisecond), time.Since(d.Time).Round(time.Minute))
	} else {
		row("drill", "none in the last 90 days (drctl drill --process P)")
	}
	if p := m.Physical; p != nil {
		row("WAL needed", "%s (%s) to %s (%s), timeline %d", p.StartLSN, p.StartSegment, p.StopLSN, p.StopSegment, p.StopTimeline)
		if win := s.Window; win != nil {
			switch {
			case !win.Restorable:
				row("restores to", "NOTHING: WAL it needs is missing (%s)", strings.Join(win.Missing, ", "))
			case len(win.Missing) > 0:
				row("restores to", "%s .. %s, then a gap at %s", win.FromLSN, win.ToLSN, win.Missing[0])
			default:
				row("restores to", "any point from %s to %s (the newest archived WAL, %s)", win.FromLSN, win.ToLSN, win.LastSegment)
			}
		}
	}
	tw.Flush()
	c := s.Contents
	if c == nil {
		return
	}
	fmt.Fprintf(w, "\ncontents: %d entries (pg_dump %s, archive format %s, compression %s)\n", c.Entries, pgarchive.Printable(c.DumpVersion), c.Version, c.Compression)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCHEMA\tTYPE\tNAME\tOWNER\tDATA")
	data := map[string]int64{}
	for _, t := range c.Tables {
		data[t.Schema+"\x00"+t.Name] = t.DataBytes
	}
	for _, sch := range c.Schemas {
		for _, e := range sch.Objects {
			if e.Desc == "TABLE DATA" {
				continue // shown as the table's size
			}
			size := ""
			switch e.Desc {
			case "TABLE":
				size = humanBytes(data[e.Namespace+"\x00"+e.Tag])
			case "BLOBS":
				size = humanBytes(e.DataBytes)
			}
			schema := sch.Name
			if schema == "" {
				schema = "-"
			}
			p := pgarchive.Printable // names from the dump, shown on a terminal
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p(schema), p(e.Desc), p(e.Tag), p(e.Owner), size)
		}
	}
	tw.Flush()
}
