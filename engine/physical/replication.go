// Package physical takes base backups over PostgreSQL's replication
// protocol and streams WAL from replication slots, through the same zstd ->
// age -> upload pipeline as logical backups.
package physical

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drctl/drctl/engine/pgdsn"
)

// connectReplication opens a physical replication connection.
func connectReplication(ctx context.Context, dsn *pgdsn.DSN) (*pgconn.PgConn, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(cctx, dsn.ConnString()+" replication='true'")
	if err != nil {
		return nil, fmt.Errorf("replication connection to %s: %s", dsn.Redacted(), dsn.RedactError(err))
	}
	return conn, nil
}

// show runs SHOW on a replication connection.
func show(ctx context.Context, conn *pgconn.PgConn, setting string) (string, error) {
	res, err := conn.Exec(ctx, "SHOW "+setting).ReadAll()
	if err != nil {
		return "", fmt.Errorf("SHOW %s: %w", setting, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return "", fmt.Errorf("SHOW %s: unexpected result", setting)
	}
	return string(res[0].Rows[0][0]), nil
}

// parseSize reads PostgreSQL's memory units ("16MB", "1GB", "8kB").
func parseSize(s string) (int64, error) {
	units := map[string]int64{"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if i <= 0 {
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, err
	}
	mult, ok := units[strings.TrimSpace(s[i:])]
	if !ok {
		return 0, fmt.Errorf("unknown unit in %q", s)
	}
	return n * mult, nil
}
