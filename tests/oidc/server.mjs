// A real OpenID provider (panva/oidc-provider) for the gateway's integration tests.
//
// env: PORT (default 9400), ISSUER (default http://127.0.0.1:PORT), KEYS (comma list of key-set
// names, default A; order = signing priority: the first set's key of an algorithm signs),
// KEYS_DIR (where NAME.json files are, written by gen-keys.mjs; default ./keys beside this file).
//
// Tokens: client_credentials for svc-acme/acme-secret and svc-globex/globex-secret, with
// `resource` = urn:gateway[:ALG][:ttlN] (a JWT access token, typ at+jwt, aud gateway),
// urn:other (aud other-api) or urn:opaque (an opaque token, for /token/introspection and
// /token/revocation). Client web/web-secret: authorization code with the dev login (id-token.mjs).
//
// Test controls, outside the provider (each answers JSON):
//   POST /__keys  sets=B,A (form body or query): builds a Provider on those key sets and swaps it
//                 in; in-flight requests finish on the old one, so the issuer is never down.
//                 200 {"sets":[...],"kids":[...]} once the new one serves; 400 if it cannot be built.
//   POST /__down  from now on every request but POST /__up answers 503.
//   POST /__up    serves again.
// One JSON line per request on stdout, written as the response ends: t, m (method), p (path),
// s (status), ms, cc (Cache-Control, when sent), ua (User-Agent); aborted: true for a connection
// that closed before its response ended.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider from 'oidc-provider';
// The library's own in-memory adapter class, deep-imported (9.13.3 has no "exports" map). Given
// as `adapter`, a Provider would make itself a private store (createMemoryAdapter); constructed
// without a store it uses the module's one store, which every Provider built here shares, so
// opaque tokens, grants and interactions outlive a key swap.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

// The library's notices (console.info) go to stderr: stdout holds only the request log.
console.info = console.error;

const PORT = Number(process.env.PORT || 9400);
const ISSUER = process.env.ISSUER || `http://127.0.0.1:${PORT}`;
const KEYS_DIR = process.env.KEYS_DIR || join(dirname(fileURLToPath(import.meta.url)), 'keys');

// Claims per client (client_credentials) and per account (authorization code).
const CLAIMS = {
  'svc-acme': {
    roles: ['reader'],
    realm_access: { roles: ['reader'] },
    tenant: 'acme',
    org: { id: 'org-1', tenant: 'acme' },
    'https://gateway.example/roles': ['reader'],
  },
  'svc-globex': {
    roles: ['admin'],
    realm_access: { roles: ['admin'] },
    tenant: 'globex',
    org: { id: 'org-2', tenant: 'globex' },
    'https://gateway.example/roles': ['admin'],
  },
};
const accountClaims = () => ({
  roles: ['user'],
  realm_access: { roles: ['user'] },
  tenant: 'acme',
  org: { id: 'org-1', tenant: 'acme' },
  'https://gateway.example/roles': ['user'],
});

// urn:gateway[:ALG][:ttlN] | urn:other | urn:opaque
function resourceInfo(ctx, resource) {
  if (resource === 'urn:opaque') {
    return { audience: 'gateway', scope: 'api', accessTokenFormat: 'opaque', accessTokenTTL: 600 };
  }
  const parts = resource.split(':');
  const audience = parts[1] === 'other' ? 'other-api' : 'gateway';
  let alg = 'RS256';
  let ttl = 600;
  for (const p of parts.slice(2)) {
    if (p.startsWith('ttl')) ttl = Number(p.slice(3));
    else alg = p;
  }
  return { audience, scope: 'api', accessTokenFormat: 'jwt', accessTokenTTL: ttl, jwt: { sign: { alg } } };
}

// The kid oidc-provider gives a key without one: its RFC 7638 thumbprint (SHA-256, base64url).
function thumbprint(jwk) {
  const members = {
    RSA: ['e', 'kty', 'n'],
    EC: ['crv', 'kty', 'x', 'y'],
    OKP: ['crv', 'kty', 'x'],
  }[jwk.kty];
  const required = Object.fromEntries(members.map((m) => [m, jwk[m]]));
  return createHash('sha256').update(JSON.stringify(required)).digest('base64url');
}

function build(sets) {
  const keys = sets.flatMap((n) => JSON.parse(readFileSync(join(KEYS_DIR, `${n}.json`), 'utf8')).keys);
  const provider = new Provider(ISSUER, {
    jwks: { keys },
    adapter: (model) => new MemoryAdapter(model),
    clients: [
      {
        client_id: 'svc-acme', client_secret: 'acme-secret', grant_types: ['client_credentials'],
        response_types: [], redirect_uris: [], scope: 'api',
      },
      {
        client_id: 'svc-globex', client_secret: 'globex-secret', grant_types: ['client_credentials'],
        response_types: [], redirect_uris: [], scope: 'api',
      },
      // The gateway as a resource server: it only introspects (client_secret_basic).
      {
        client_id: 'gateway', client_secret: 'gateway-secret', grant_types: [],
        response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: 'web',
        client_secret: 'web-secret',
        // native: a hybrid ('… token') client of type web must register https redirect URIs only;
        // a native one may use http on a loopback address.
        application_type: 'native',
        grant_types: ['authorization_code', 'implicit'],
        response_types: ['code', 'code id_token token'],
        redirect_uris: ['http://127.0.0.1:9/cb'], scope: 'openid api', id_token_signed_response_alg: 'RS256',
      },
    ],
    // 'code id_token token' (hybrid) for an ID token with at_hash: from the token endpoint it has none.
    responseTypes: ['code', 'code id_token token'],
    cookies: { keys: ['cookie-key-for-tests-only'] },
    features: {
      clientCredentials: { enabled: true },
      // Any authenticated client (a resource server) may introspect any token.
      introspection: { enabled: true, allowedPolicy: async () => true },
      // A client revokes its own tokens only (the library's default, stated).
      revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:gateway',
        useGrantedResource: () => true,
        getResourceServerInfo: resourceInfo,
      },
    },
    scopes: ['openid', 'api'],
    extraTokenClaims: async (ctx, token) => (token.accountId ? accountClaims(token.accountId) : CLAIMS[token.clientId]),
    findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id, tenant: 'acme' }) }),
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  const kids = keys.map((k) => k.kid ?? thumbprint(k));
  return { sets, kids, handler: provider.callback() };
}

let current = build((process.env.KEYS || 'A').split(','));
let down = false;

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function control(req, res, url) {
  if (req.method !== 'POST') return reply(res, 405, { error: 'POST only' });
  switch (url.pathname) {
    case '/__up':
      down = false;
      return reply(res, 200, { down });
    case '/__down':
      down = true;
      return reply(res, 200, { down });
    case '/__keys': {
      const form = new URLSearchParams(await readBody(req));
      const list = form.get('sets') ?? url.searchParams.get('sets');
      if (!list) return reply(res, 400, { error: 'sets=NAME[,NAME...] is required' });
      let next;
      try {
        next = build(list.split(','));
      } catch (err) {
        return reply(res, 400, { error: String(err?.message ?? err) });
      }
      current = next;
      return reply(res, 200, { sets: current.sets, kids: current.kids });
    }
    default:
      return reply(res, 404, { error: 'no such control' });
  }
}

const server = createServer((req, res) => {
  const start = Date.now();
  const url = new URL(req.url, ISSUER);
  // The line is written when the response ends, before its last bytes go out (stdout on a file
  // is written synchronously): a client that has its answer finds its request in the log.
  let logged = false;
  const log = (extra) => {
    if (logged) return;
    logged = true;
    console.log(JSON.stringify({
      t: new Date(start).toISOString(),
      m: req.method,
      p: url.pathname,
      s: res.statusCode,
      ms: Date.now() - start,
      cc: res.getHeader('cache-control') || undefined,
      ua: req.headers['user-agent'],
      ...extra,
    }));
  };
  const end = res.end.bind(res);
  res.end = (...args) => {
    log();
    return end(...args);
  };
  res.on('close', () => log({ aborted: true }));
  if (down && url.pathname !== '/__up') return reply(res, 503, { error: 'down' });
  if (url.pathname.startsWith('/__')) {
    return control(req, res, url).catch((err) => reply(res, 500, { error: String(err) }));
  }
  return current.handler(req, res);
});
server.listen(PORT, '127.0.0.1', () => console.error(`listening ${ISSUER} keys=${current.sets.join(',')}`));
process.on('SIGTERM', () => process.exit(0));
