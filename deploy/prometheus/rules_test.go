// Package prometheus holds drctl's alerting rules; this test runs
// promtool's checks and the rules' unit tests (drctl-rules.test.yml).
package prometheus

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/drctl/drctl/testrig"
)

func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		testrig.Missing(t, "promtool (Debian package prometheus; make deps installs it)")
	}
	for _, args := range [][]string{{"check", "rules", "drctl-rules.yml"}, {"test", "rules", "drctl-rules.test.yml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SUCCESS") {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
