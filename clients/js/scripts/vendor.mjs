// Copies the built client into mesa-cli's embedded demo assets (the `mesa` binary serves it at
// /demo/mesa-client.js), without the source map comment (the map is not served). `--check` only compares,
// for the unit tests: a stale copy fails them with the command that fixes it.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const vendored = fileURLToPath(new URL('../../../crates/mesa-cli/assets/demo/mesa-client.js', import.meta.url));

export function expected() {
  const code = readFileSync(built, 'utf8').replace(/\n\/\/# sourceMappingURL=.*\n?$/, '\n');
  return `// Built from clients/js/src/index.ts by \`npm run build\` in clients/js; do not edit.\n${code}`;
}

export { vendored };

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(vendored, expected());
}
