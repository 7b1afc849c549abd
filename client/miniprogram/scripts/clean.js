// Removes a build directory (portable `rm -rf`, no dependency).
const fs = require("node:fs");
for (const dir of process.argv.slice(2)) {
  fs.rmSync(dir, { recursive: true, force: true });
}
