// node gen-keys.mjs DIR NAME -> DIR/NAME.json: a private JWKS with one RS256, one PS256, one P-256,
// one Ed25519 and one P-384 key (no kid: oidc-provider names each key by its RFC 7638 thumbprint).
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, name] = process.argv.slice(2);
if (!dir || !name) {
  console.error('usage: node gen-keys.mjs DIR NAME');
  process.exit(2);
}
const jwk = (kp, extra = {}) => ({ ...kp.privateKey.export({ format: 'jwk' }), ...extra });
const keys = [
  jwk(generateKeyPairSync('rsa', { modulusLength: 2048 }), { alg: 'RS256', use: 'sig' }),
  jwk(generateKeyPairSync('rsa', { modulusLength: 2048 }), { alg: 'PS256', use: 'sig' }),
  jwk(generateKeyPairSync('ec', { namedCurve: 'P-256' })), // ES256 (the only algorithm of P-256)
  jwk(generateKeyPairSync('ed25519')), // no alg: signs for both EdDSA and Ed25519
  jwk(generateKeyPairSync('ec', { namedCurve: 'P-384' })), // ES384
];
mkdirSync(dir, { recursive: true });
const file = join(dir, `${name}.json`);
writeFileSync(file, JSON.stringify({ keys }, null, 1));
console.log(file, keys.map((k) => k.kty + (k.crv ? `/${k.crv}` : '') + (k.alg ? `/${k.alg}` : '')).join(' '));
