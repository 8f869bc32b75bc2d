// Validate an AsyncAPI document with the official parser (@asyncapi/parser), as AsyncAPI tools do.
//   node tools/asyncapi/validate.js docs/schemas/asyncapi.json [more.json ...]
// Prints every diagnostic (errors and warnings) as one JSON object per line, with its file; exit 1
// when the parser reports an error in any file, 0 otherwise (warnings are printed, not fatal).
"use strict";

const fs = require("fs");
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

async function validate(parser, file) {
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"), { source: file });
  const severity = ["error", "warning", "info", "hint"];
  for (const d of diagnostics) {
    process.stdout.write(JSON.stringify({ file, severity: severity[d.severity], code: d.code, message: d.message, path: d.path.join(".") }) + "\n");
  }
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  if (!document || errors.length) {
    process.stderr.write(`${file}: ${errors.length} error(s)\n`);
    return false;
  }
  const channels = document.channels().length;
  const operations = document.operations().length;
  process.stderr.write(`${file}: valid AsyncAPI ${document.version()} (${channels} channels, ${operations} operations)\n`);
  return true;
}

async function main() {
  const files = process.argv.slice(2);
  if (!files.length) throw new Error("usage: node validate.js <asyncapi.json> [more.json ...]");
  const parser = new Parser();
  let ok = true;
  for (const file of files) ok = (await validate(parser, file)) && ok;
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  process.stderr.write(`error: ${err.stack || err.message}\n`);
  process.exit(2);
});
