package drill

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/policy"
)

// RunChecks runs a process's checks in the restored database, each in a
// read-only transaction, and says what each saw. The error is for a
// database that cannot be reached at all; a check whose SQL fails fails.
func RunChecks(ctx context.Context, dsn string, p policy.Process, recoveryPoint time.Time) ([]catalog.DrillCheck, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to the restored database %s: %w", p.Database, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var out []catalog.DrillCheck
	for _, c := range p.Checks {
		res := catalog.DrillCheck{Name: c.Name, Expect: c.Expect.Text}
		rows, err := query(ctx, conn, c.SQL)
		if err != nil {
			res.Saw = "error: " + oneLine(err.Error())
		} else {
			res.Passed, res.Saw = judge(c.Expect, rows, p.RPO, recoveryPoint)
		}
		out = append(out, res)
	}
	return out, nil
}

// maxRows bounds what a check's query returns to drctl.
const maxRows = 1000

func query(ctx context.Context, conn *pgx.Conn, sql string) ([][]any, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() && len(out) < maxRows {
		v, err := rows.Values()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// judge says whether rows meet the expectation, and what was seen.
func judge(e policy.Expect, rows [][]any, rpo time.Duration, recoveryPoint time.Time) (bool, string) {
	describe := func() string {
		switch len(rows) {
		case 0:
			return "no rows"
		case 1:
			return "1 row: " + render(rows[0])
		}
		more := ""
		if len(rows) >= maxRows {
			more = " or more"
		}
		return fmt.Sprintf("%d%s rows, the first: %s", len(rows), more, render(rows[0]))
	}
	switch e.Kind {
	case "none":
		return len(rows) == 0, describe()
	case "some":
		return len(rows) > 0, describe()
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return false, describe() + " (want one row of one value)"
	}
	v := rows[0][0]
	switch e.Kind {
	case "compare":
		n, ok := number(v)
		if !ok {
			return false, fmt.Sprintf("%s (not a number)", render(rows[0]))
		}
		if math.IsNaN(n) || math.IsInf(n, 0) {
			return false, strconv.FormatFloat(n, 'f', -1, 64) + " (not a finite number)"
		}
		return e.Holds(n), strconv.FormatFloat(n, 'f', -1, 64)
	case "within_rpo":
		t, ok := v.(time.Time)
		if !ok {
			return false, fmt.Sprintf("%s (not a timestamp)", render(rows[0]))
		}
		if recoveryPoint.IsZero() {
			return false, fmt.Sprintf("%s; the recovery point is unknown", t.UTC().Format(time.RFC3339))
		}
		behind := recoveryPoint.Sub(t)
		return behind <= rpo, fmt.Sprintf("%s, %s before the recovery point %s", t.UTC().Format(time.RFC3339), behind.Round(time.Second), recoveryPoint.UTC().Format(time.RFC3339))
	}
	return false, "unknown expectation"
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case int32:
		return float64(n), true
	case int16:
		return float64(n), true
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case nil:
		return 0, false
	}
	if n, ok := v.(interface {
		Float64Value() (pgtype.Float8, error)
	}); ok {
		f, err := n.Float64Value()
		return f.Float64, err == nil && f.Valid
	}
	f, err := strconv.ParseFloat(fmt.Sprint(v), 64)
	return f, err == nil
}

func render(row []any) string {
	parts := make([]string, len(row))
	for i, v := range row {
		switch t := v.(type) {
		case nil:
			parts[i] = "NULL"
		case time.Time:
			parts[i] = t.UTC().Format(time.RFC3339)
		default:
			parts[i] = oneLine(fmt.Sprint(v))
		}
	}
	s := strings.Join(parts, ", ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
