// node-postgres (`pg`) against LogSphere (tests/it/clients.rs).
// Usage: node node_clients.js PG_PORT — expects the records posted by the test; exits
// non-zero with a message on the first wrong answer, prints `node clients ok` at the end.
'use strict';
const assert = require('node:assert/strict');
const { Client } = require('pg');

const port = Number(process.argv[2]);

function check(what, got, want) {
  assert.deepStrictEqual(got, want, what);
  console.log(`ok: ${what} = ${JSON.stringify(got)}`);
}

async function main() {
  const client = new Client({ host: '127.0.0.1', port, user: 'logsphere', database: 'logsphere' });
  await client.connect();
  try {
    // Bound parameters over the extended protocol: text, and a Date as a timestamptz.
    let res = await client.query(
      'SELECT count(*) AS n FROM logs WHERE source = $1 AND log_level = $2 AND timestamp >= $3',
      ['web-1', 'ERROR', new Date(Date.UTC(2026, 10, 24, 10, 1, 0))],
    );
    // int8 arrives as a string in node-postgres; of web-1's two errors (10:00, 10:05) only
    // the later one is at or after 10:01.
    check('count with bound parameters', res.rows[0].n, '1');

    // A timestamptz column comes back as a Date holding the same instant.
    res = await client.query('SELECT timestamp, message FROM logs WHERE message = $1', ['disk full']);
    check('row count', res.rowCount, 1);
    check('timestamptz', res.rows[0].timestamp.toISOString(), '2026-11-24T13:00:00.000Z');
    check('text', res.rows[0].message, 'disk full');
    check(
      'column types',
      res.fields.map((f) => [f.name, f.dataTypeID]),
      [['timestamp', 1184], ['message', 25]],
    );

    // NULLs: a missing attribute, and a NULL bound parameter.
    res = await client.query(
      "SELECT attributes ->> 'no_such_key' AS missing, $1::text AS param, $1::text IS NULL AS is_null " +
        'FROM logs WHERE message = $2',
      [null, 'disk full'],
    );
    check('NULL values', res.rows[0], { missing: null, param: null, is_null: true });

    // The simple protocol (no parameters) and a PostgreSQL error with its SQLSTATE.
    res = await client.query('SELECT source, count(*)::int AS n FROM logs GROUP BY source ORDER BY source');
    check('simple query', res.rows, [{ source: 'web-1', n: 4 }, { source: 'web-2', n: 1 }]);
    try {
      await client.query('SELECT * FROM no_such_table');
      assert.fail('unknown table did not fail');
    } catch (e) {
      check('SQLSTATE of an unknown table', e.code, '42P01');
    }
  } finally {
    await client.end();
  }
  console.log('node clients ok');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
