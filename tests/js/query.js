// Runs one statement through the official Trino JavaScript client (npm `trino-client`) and
// prints what the client saw as one JSON line: {"columns": [...], "rows": [...]} or
// {"error": {...}}. Usage: node query.js SERVER TOKEN SCHEMA SQL
'use strict';
const { Trino, BasicAuth } = require('trino-client');

async function main() {
  const [server, token, schema, sql] = process.argv.slice(2);
  // Floe takes the token as the Basic password (the client has no bearer auth of its own).
  const trino = Trino.create({ server, catalog: 'floe', schema, auth: new BasicAuth('js', token) });
  const iter = await trino.query(sql);
  let columns = null;
  const rows = [];
  for await (const page of iter) {
    if (page.error) {
      console.log(JSON.stringify({ error: page.error }));
      return;
    }
    if (page.columns) columns = page.columns.map(c => [c.name, c.type]);
    if (page.data) rows.push(...page.data);
  }
  console.log(JSON.stringify({ columns, rows }));
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
