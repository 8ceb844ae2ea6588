package main_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/drctl/drctl/testrig"
)

// TestS3FaultMatrix runs a whole backup -> verify -> restore -> prune
// cycle through a proxy that fails a tenth of the requests of one S3
// operation at a time (503 SlowDown, 429, connection reset, slow answers,
// GET bodies cut half-way, writes carried out whose answer is lost), as
// kopia's FaultyStorage does. The data must come back exact, and nothing
// listed may lose an object.
func TestS3FaultMatrix(t *testing.T) {
	pg := testrig.StartPostgres(t)
	srv := testrig.StartS3(t)
	keys := testrig.NewKeys(t, t.TempDir())
	pg.LoadAwkward(t, "shop", false)
	want := pg.DumpPlain(t, "shop")
	for i, op := range []string{"Put", "Get", "Stat", "List", "Delete"} {
		t.Run(op, func(t *testing.T) {
			proxy := testrig.StartS3Proxy(t, srv.Endpoint, uint64(1000+i))
			env := append(proxy.Env(srv), "DRCTL_REPO="+srv.RepoURL("faults-"+strings.ToLower(op)), "AWS_MAX_ATTEMPTS=10",
				"DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile)
			proxy.SetFaults(0.10, op)
			var ids []string
			for n := 0; n < 4; n++ {
				var b struct{ ID string }
				decodeJSON(t, mustRun(t, env, "backup", "--dsn", pg.DSN("shop"), "--json").stdout, &b)
				ids = append(ids, b.ID)
			}
			mustRun(t, env, "verify", "--all")
			db := "faults_" + strings.ToLower(op)
			mustRun(t, env, "restore", "latest", "--into", pg.DSN(db))
			if got := pg.DumpPlain(t, db); got != want {
				t.Fatalf("restored through %s faults: %s", op, testrig.FirstDiff(got, want))
			}
			mustRun(t, env, "prune", "--keep-last", "1")
			var list []struct{ ID string }
			decodeJSON(t, mustRun(t, env, "list", "--json").stdout, &list)
			if len(list) != 1 || list[0].ID != ids[len(ids)-1] {
				t.Fatalf("after prune: %+v, want only %s", list, ids[len(ids)-1])
			}
			mustRun(t, env, "verify", "--all")
			faults, requests := proxy.Injected()
			var kinds []string
			total := 0
			for k, n := range faults {
				kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
				total += n
			}
			sort.Strings(kinds)
			t.Logf("%d %s requests, faults injected: %s", requests[op], op, strings.Join(kinds, " "))
			if total < requests[op]/10-1 || total < 1 {
				t.Fatalf("%d faults injected into %d %s requests, want a tenth", total, requests[op], op)
			}
			if special := map[string]string{"Get": "Get/truncate", "Put": "Put/lost-reply", "Delete": "Delete/lost-reply"}[op]; special != "" && faults[special] == 0 {
				t.Fatalf("no %s fault injected", special)
			}
		})
	}
}

// DRCTL_S3_CHECKSUMS=off stops the CRC32C headers (for servers that reject
// them); by default every upload request carries one.
func TestS3ChecksumsOff(t *testing.T) {
	pg := testrig.StartPostgres(t)
	srv := testrig.StartS3(t)
	keys := testrig.NewKeys(t, t.TempDir())
	pg.LoadAwkward(t, "shop", false)
	for _, off := range []bool{false, true} {
		proxy := testrig.StartS3Proxy(t, srv.Endpoint, 1)
		env := append(proxy.Env(srv), "DRCTL_REPO="+srv.RepoURL(fmt.Sprintf("checksums-%v", off)),
			"DRCTL_AGE_RECIPIENTS_FILE="+keys.RecipientsFile, "DRCTL_AGE_IDENTITY_FILE="+keys.IdentityFile)
		if off {
			env = append(env, "DRCTL_S3_CHECKSUMS=off")
		}
		mustRun(t, env, "backup", "--dsn", pg.DSN("shop"))
		mustRun(t, env, "verify", "latest")
		if n := proxy.Checksummed(); (n == 0) != off {
			t.Fatalf("DRCTL_S3_CHECKSUMS off=%v: %d requests carried a CRC32C header", off, n)
		}
	}
	mustFail(t, []string{"DRCTL_REPO=s3://b/x", "DRCTL_S3_CHECKSUMS=maybe"}, "DRCTL_S3_CHECKSUMS", "list")
}
