// What the browser tests share: where the hub binary and Chromium are,
// HS256 tokens, free ports.
import { createHmac } from 'node:crypto';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '../..');
export const HERALD_BIN = resolve(process.env.HERALD_BIN || join(ROOT, 'target/debug/herald'));
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

// An HS256 JWT with `claims`, signed with `secret`.
export function mintJwt(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return body + '.' + createHmac('sha256', secret).update(body).digest('base64url');
}

// A TCP port nobody listens on right now.
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
