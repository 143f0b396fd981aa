// A real, certified OpenID provider (panva/oidc-provider) on loopback for Rollcall's sign-in
// tests. The protocol is entirely oidc-provider's; this file only does what every deployment of
// it must do itself: the login page (any registered account signs in by its id, no password),
// consent (granted), and a few test controls under /__test/.
//
// Usage: node provider.mjs --clients '<json>' [--client-key-out <file> --client-key-id <kid>]
// Prints one JSON line {"issuer": "..."} once it listens; stops when stdin closes.
//
// Test controls (POST, JSON bodies):
//   /__test/accounts  {"sub": "...", "claims": {...}}  registers an account
//   /__test/rotate                                     signs with a new key from now on (the old
//                                                       key stays published), answers {"kid"}
//   /__test/clock     {"offset_seconds": -7200}        moves the provider's clock
//   /__test/hide-keys {"hide": true}                   publishes a decoy key set instead of ours

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    clients: { type: 'string' },
    'client-key-out': { type: 'string' },
    'client-key-id': { type: 'string' },
  },
});

const realNow = Date.now;
let offsetMs = 0;
Date.now = () => realNow() + offsetMs;

function rsaKey(kid) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

function publicPart(jwk) {
  const { kty, n, e, kid, alg, use } = jwk;
  return { kty, n, e, kid, alg, use };
}

const clients = JSON.parse(args.clients ?? '[]');
if (args['client-key-out']) {
  // The private_key_jwt client's key pair: the private half for Rollcall, the public half
  // registered with the client.
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(args['client-key-out'], privateKey.export({ format: 'pem', type: 'pkcs8' }));
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: args['client-key-id'], use: 'sig' };
  for (const client of clients) {
    if (client.token_endpoint_auth_method === 'private_key_jwt') client.jwks = { keys: [jwk] };
  }
}

const accounts = new Map();
let signingKeys = [rsaKey(`key-${randomUUID()}`)];
let hideKeys = false;
const decoy = publicPart(rsaKey('decoy'));

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

function makeProvider() {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: signingKeys },
    findAccount: async (ctx, id) => {
      const claims = accounts.get(id);
      if (!claims) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'oid', 'tid', 'upn', 'groups'],
      email: ['email', 'email_verified'],
    },
    conformIdTokenClaims: false,
    // HS256 too, for the client whose ID tokens Rollcall must refuse.
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'HS256'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
    },
    pkce: { required: () => true, methods: ['S256'] },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['rollcall-test-provider'] },
  });
  provider.use(async (ctx, next) => {
    await next();
    if (hideKeys && ctx.path === '/jwks') ctx.body = { keys: [decoy] };
  });
  return provider;
}

let provider = makeProvider();

function body(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

function send(res, status, type, text) {
  res.writeHead(status, { 'content-type': type });
  res.end(text);
}

function loginPage(uid, error) {
  return `<!doctype html><html><head><title>Test provider sign-in</title></head><body>
<h1>Sign in</h1>${error ? `<p id="error">${error}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
<label>Account <input id="login" name="login" autofocus></label>
<button id="submit" type="submit">Sign in</button>
</form></body></html>`;
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (action === 'login' && req.method === 'POST') {
    const login = new URLSearchParams(await body(req)).get('login') ?? '';
    if (!accounts.has(login)) return send(res, 200, 'text/html', loginPage(uid, 'No such account.'));
    return provider.interactionFinished(req, res, { login: { accountId: login } },
      { mergeWithLastSubmission: false });
  }
  const { prompt, params, session } = details;
  if (prompt.name === 'login') return send(res, 200, 'text/html', loginPage(uid));
  // Consent: granted.
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const grantId = await grant.save();
  return provider.interactionFinished(req, res,
    { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
}

async function control(req, res, name) {
  const input = JSON.parse((await body(req)) || '{}');
  switch (name) {
    case 'accounts':
      accounts.set(input.sub, input.claims ?? {});
      return send(res, 200, 'application/json', '{}');
    case 'rotate': {
      const key = rsaKey(`key-${randomUUID()}`);
      signingKeys = [key, ...signingKeys];
      provider = makeProvider();
      return send(res, 200, 'application/json', JSON.stringify({ kid: key.kid }));
    }
    case 'clock':
      offsetMs = Number(input.offset_seconds ?? 0) * 1000;
      return send(res, 200, 'application/json', '{}');
    case 'hide-keys':
      hideKeys = Boolean(input.hide);
      return send(res, 200, 'application/json', '{}');
    default:
      return send(res, 404, 'text/plain', 'no such control');
  }
}

server.on('request', async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const test = url.pathname.match(/^\/__test\/([a-z-]+)$/);
    if (test && req.method === 'POST') return await control(req, res, test[1]);
    const step = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login))?$/);
    if (step) return await interaction(req, res, step[1], step[2]);
    return provider.callback()(req, res);
  } catch (error) {
    return send(res, 500, 'text/plain', String(error));
  }
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
console.log(JSON.stringify({ issuer }));
