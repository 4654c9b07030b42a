// `npm run vendor`: copies the built client into mesa-cli's embedded demo assets (the `mesa` binary serves it
// at /demo/mesa-client.js), without the source map comment (the map is not served). Not part of `npm test`,
// which must not change sources under cargo's feet: a unit test compares instead, and a stale copy fails it
// with the command that fixes it. Writes only when the content differs (cargo rebuilds on a newer mtime).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const vendored = fileURLToPath(new URL('../../../crates/mesa-cli/assets/demo/mesa-client.js', import.meta.url));

export function expected() {
  const code = readFileSync(built, 'utf8').replace(/\n\/\/# sourceMappingURL=.*\n?$/, '\n');
  return `// Built from clients/js/src/index.ts by \`npm run vendor\` in clients/js; do not edit.\n${code}`;
}

export { vendored };

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  let current = null;
  try {
    current = readFileSync(vendored, 'utf8');
  } catch {
    /* first copy */
  }
  if (current !== expected()) writeFileSync(vendored, expected());
}
