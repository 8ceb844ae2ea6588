package drill

import (
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/policy"
)

func TestJudge(t *testing.T) {
	rp := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	expect := func(s string) policy.Expect {
		e, err := policy.ParseExpect(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	for _, c := range []struct {
		expect string
		rows   [][]any
		pass   bool
		saw    string
	}{
		{">= 1000", [][]any{{int64(1000)}}, true, "1000"},
		{">= 1000", [][]any{{int64(999)}}, false, "999"},
		{"= 0", [][]any{{float64(0)}}, true, "0"},
		{"< 5", [][]any{{"7"}}, false, "7"},
		{">= 1", [][]any{}, false, "no rows (want one row of one value)"},
		{">= 1", [][]any{{nil}}, false, "NULL (not a number)"},
		{"none", [][]any{}, true, "no rows"},
		{"none", [][]any{{int64(7), "x"}}, false, "1 row: 7, x"},
		{"some", [][]any{{1}, {2}}, true, "2 rows, the first: 1"},
		{"some", nil, false, "no rows"},
		{"within_rpo", [][]any{{rp.Add(-30 * time.Second)}}, true, "30s before the recovery point"},
		{"within_rpo", [][]any{{rp.Add(-2 * time.Minute)}}, false, "2m0s before the recovery point"},
		{"within_rpo", [][]any{{"yesterday"}}, false, "not a timestamp"},
	} {
		pass, saw := judge(expect(c.expect), c.rows, time.Minute, rp)
		if pass != c.pass || !strings.Contains(saw, c.saw) {
			t.Errorf("%s on %v: %v, %q; want %v, %q", c.expect, c.rows, pass, saw, c.pass, c.saw)
		}
	}
}
