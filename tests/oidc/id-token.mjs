// node id-token.mjs PORT [NONCE] [code|hybrid] -> prints an ID token for client `web` (login user-1).
//
// The provider's own flow, driven as a browser would drive it: GET /auth, follow the redirects to
// the dev login form (devInteractions), submit it (any login), then the consent form, and follow
// the redirects to the client's redirect_uri (http://127.0.0.1:9/cb, never fetched: what it would
// get is read from the Location header). Cookies are kept by name (interaction and session).
//   code (default): response_type=code; the code is exchanged at /token with web/web-secret and
//     the token response's id_token printed (oidc-provider puts no at_hash in that one).
//   hybrid: response_type=code id_token token; the id_token of the authorization response
//     (fragment) is printed, with at_hash and c_hash for the access token and code beside it.
const [port, nonce = 'n1', mode = 'code'] = process.argv.slice(2);
if (!port || !['code', 'hybrid'].includes(mode)) {
  console.error('usage: node id-token.mjs PORT [NONCE] [code|hybrid]');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const redirectUri = 'http://127.0.0.1:9/cb';
const jar = new Map();

function fail(message) {
  console.error(`id-token.mjs: ${message}`);
  process.exit(1);
}

async function request(url, init = {}) {
  const headers = { ...init.headers, 'user-agent': 'oidc-test-browser' };
  if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  for (const c of res.headers.getSetCookie()) {
    const [pair, ...attrs] = c.split(';');
    const at = pair.indexOf('=');
    const [name, value] = [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
    const expired = attrs.some((a) => /^\s*expires=.*1970/i.test(a)) || value === '';
    if (expired) jar.delete(name);
    else jar.set(name, value);
  }
  return res;
}

const auth = new URL('/auth', issuer);
auth.search = new URLSearchParams({
  client_id: 'web', response_type: mode === 'code' ? 'code' : 'code id_token token', scope: 'openid api', redirect_uri: redirectUri, nonce,
}).toString();

let url = auth.toString();
let code;
let response; // the authorization response's parameters
for (let step = 0; step < 20 && !code; step += 1) {
  const res = await request(url);
  if (res.status >= 300 && res.status < 400) {
    const next = new URL(res.headers.get('location'), url);
    if (next.href.startsWith(redirectUri)) {
      response = new URLSearchParams(mode === 'code' ? next.search : next.hash.slice(1));
      code = response.get('code');
      if (!code) fail(`the redirect_uri got no code: ${next.href}`);
    } else {
      url = next.href;
    }
    continue;
  }
  const html = await res.text();
  if (res.status !== 200) fail(`GET ${url}: ${res.status} ${html.slice(0, 500)}`);
  // A dev interaction page: a form posting `prompt` (login or consent) back to its own uid.
  const action = html.match(/<form[^>]*action="([^"]+)"/)?.[1];
  const prompt = html.match(/name="prompt" value="([^"]+)"/)?.[1];
  if (!action || !prompt) fail(`GET ${url}: no interaction form in ${html.slice(0, 500)}`);
  const form = prompt === 'login' ? { prompt, login: 'user-1', password: 'any' } : { prompt };
  const post = await request(new URL(action, url), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form).toString(),
  });
  if (post.status < 300 || post.status >= 400) fail(`POST ${action} (${prompt}): ${post.status} ${await post.text()}`);
  url = new URL(post.headers.get('location'), url).href;
}
if (!code) fail('no code after 20 steps');

if (mode === 'hybrid') {
  const idToken = response.get('id_token');
  if (!idToken || !response.get('access_token')) fail(`no id_token and access_token in ${response}`);
  console.log(idToken);
  process.exit(0);
}

const res = await request(new URL('/token', issuer), {
  method: 'POST',
  headers: {
    authorization: `Basic ${Buffer.from('web:web-secret').toString('base64')}`,
    'content-type': 'application/x-www-form-urlencoded',
  },
  body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri }).toString(),
});
const body = await res.json();
if (res.status !== 200 || !body.id_token) fail(`POST /token: ${res.status} ${JSON.stringify(body)}`);
console.log(body.id_token);
