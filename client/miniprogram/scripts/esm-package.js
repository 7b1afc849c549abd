// Marks dist/esm as ES modules for Node (the CommonJS build stays the package default).
const fs = require("node:fs");
fs.writeFileSync("dist/esm/package.json", JSON.stringify({ type: "module" }) + "\n");
