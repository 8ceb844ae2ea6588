package main

import (
	"strings"
	"testing"
)

// The config file and labels come from users: bad ones are errors that
// say so, never a panic, and what is accepted keeps its meaning.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte("repo: s3://backups/erp/prod\ndsn: host=db user=backup\nrecipients_file: /etc/drctl/r.txt\nlog_level: info\nenv:\n  AWS_REGION: eu-west-1\n"))
	f.Add([]byte("repo: [1, 2]\n"))
	f.Add([]byte("unknown_key: x\n"))
	f.Add([]byte("env:\n  PATH: /tmp\n"))
	f.Add([]byte("&a [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fc, err := parseFileConfig(data)
		if err != nil {
			return
		}
		for k := range fc.Env {
			if !strings.HasPrefix(k, "AWS_") && !strings.HasPrefix(k, "DRCTL_") {
				t.Fatalf("accepted env %q", k)
			}
		}
	})
}

func FuzzLabels(f *testing.F) {
	f.Add("release=2026.11", "process=pos-sync")
	f.Add("=x", "k=")
	f.Add("no-equals", "a=b=c")
	f.Fuzz(func(t *testing.T, a, b string) {
		labels, err := parseLabels([]string{a, b})
		if err != nil {
			return
		}
		for k := range labels {
			if k == "" {
				t.Fatal("accepted an empty label key")
			}
		}
		if k, v, _ := strings.Cut(b, "="); labels[k] != v {
			t.Fatalf("label %q: got %q", b, labels[k])
		}
	})
}
