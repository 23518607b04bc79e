// pgx (github.com/jackc/pgx/v5, the driver of Grafana's PostgreSQL data source) against
// LogSphere (tests/it/clients.rs).
// Usage: pgx_clients PG_PORT — expects the records posted by the test; exits non-zero with a
// message on the first wrong answer, prints `pgx clients ok` at the end.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func check(what string, got, want any) {
	if !reflect.DeepEqual(got, want) {
		fmt.Fprintf(os.Stderr, "%s: got %#v, want %#v\n", what, got, want)
		os.Exit(1)
	}
	fmt.Printf("ok: %s = %v\n", what, got)
}

func must(what string, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(1)
	}
}

// fields names each result column with its type OID.
func fields(rows pgx.Rows) []string {
	var out []string
	for _, f := range rows.FieldDescriptions() {
		out = append(out, fmt.Sprintf("%s:%d", f.Name, f.DataTypeOID))
	}
	return out
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := fmt.Sprintf("postgres://logsphere@127.0.0.1:%s/logsphere?sslmode=disable", os.Args[1])
	conn, err := pgx.Connect(ctx, url)
	must("connect", err)
	defer conn.Close(ctx)

	// Bound parameters over the extended protocol (pgx's default): text and a time.Time as
	// timestamptz. Of web-1's two errors (10:00, 10:05) only the later is at or after 10:01.
	since := time.Date(2026, 11, 24, 10, 1, 0, 0, time.UTC)
	var n int64
	must("count with parameters", conn.QueryRow(ctx,
		"SELECT count(*) FROM logs WHERE source = $1 AND log_level = $2 AND timestamp >= $3",
		"web-1", "ERROR", since).Scan(&n))
	check("count with bound text and timestamptz", n, int64(1))

	// An int parameter (LIMIT) and column names and type OIDs as PostgreSQL gives them:
	// count(*) is `count` (int8, 20), min(timestamp) is `min` (timestamptz, 1184).
	rows, err := conn.Query(ctx,
		"SELECT source, count(*), min(timestamp) FROM logs GROUP BY source ORDER BY source LIMIT $1", 10)
	must("group by", err)
	check("column names and OIDs", fields(rows), []string{"source:25", "count:20", "min:1184"})
	var got []string
	for rows.Next() {
		var source string
		var count int64
		var first time.Time
		must("scan", rows.Scan(&source, &count, &first))
		got = append(got, fmt.Sprintf("%s %d %s", source, count, first.UTC().Format(time.RFC3339)))
	}
	must("rows", rows.Err())
	check("groups", got, []string{"web-1 4 2026-11-24T10:00:00Z", "web-2 1 2026-11-24T12:00:00Z"})

	// A timestamptz is read as a time.Time holding the same instant.
	var ts time.Time
	var msg string
	must("timestamptz", conn.QueryRow(ctx,
		"SELECT timestamp, message FROM logs WHERE message = $1", "disk full").Scan(&ts, &msg))
	check("timestamptz as time.Time", ts.UTC(), time.Date(2026, 11, 24, 13, 0, 0, 0, time.UTC))
	check("text", msg, "disk full")

	// NULLs: a NULL bound parameter and a missing attribute, read into pointers.
	var param, missing *string
	var isNull bool
	must("nulls", conn.QueryRow(ctx,
		"SELECT $1::text, $1::text IS NULL, attributes ->> 'no_such_key' FROM logs WHERE message = $2",
		nil, "disk full").Scan(&param, &isNull, &missing))
	check("NULL parameter", param == nil && isNull, true)
	check("NULL attribute", missing == nil, true)

	// The simple protocol (what pgx uses with QueryExecModeSimpleProtocol), an int8 parameter
	// interpolated client-side.
	must("simple protocol", conn.QueryRow(ctx,
		"SELECT count(*) FROM logs WHERE log_level = $1 AND length(message) > $2",
		pgx.QueryExecModeSimpleProtocol, "ERROR", int64(0)).Scan(&n))
	check("simple protocol count", n, int64(3))

	// A Grafana time-series panel's query after its macros are expanded:
	// $__timeGroupAlias(timestamp, 1h) and $__timeFilter(timestamp) with RFC 3339 bounds.
	rows, err = conn.Query(ctx, `SELECT floor(extract(epoch from "timestamp")/3600)*3600 AS "time", `+
		`count(*) AS "value" FROM logs `+
		`WHERE "timestamp" BETWEEN '2026-11-24T09:30:00Z' AND '2026-11-24T12:30:00Z' GROUP BY 1 ORDER BY 1`)
	must("grafana time series", err)
	got = nil
	for rows.Next() {
		var bucket float64
		var value int64
		must("scan", rows.Scan(&bucket, &value))
		got = append(got, fmt.Sprintf("%s %d", time.Unix(int64(bucket), 0).UTC().Format("15:04"), value))
	}
	must("rows", rows.Err())
	check("grafana time series per hour", got, []string{"10:00 2", "11:00 1", "12:00 1"})

	// An error carries its SQLSTATE, and the connection stays usable after it.
	_, err = conn.Exec(ctx, "SELECT * FROM no_such_table")
	var pgErr *pgconn.PgError
	check("SQLSTATE of an unknown table", errors.As(err, &pgErr) && pgErr.Code == "42P01", true)
	must("after error", conn.QueryRow(ctx, "SELECT count(*) FROM logs").Scan(&n))
	check("count after an error", n, int64(5))
	fmt.Println("pgx clients ok")
}
