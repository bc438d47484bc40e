// oidc-provider configured as Logto's token endpoint (client_credentials + resource indicators),
// for bearerguard's interop tests. Listens on 127.0.0.1 only.
//
//   node issuer.mjs --port 0 --keys keys.json [--dpop]
//
// --dpop turns oidc-provider's DPoP on (RFC 9449: a token request with a proof gets a token
// bound to its key). Logto keeps it off; it is the engine's default.
//
// keys.json is a JWK Set of *private* keys in order: keys[0] is the current signer, the rest
// stay published in the JWKS (Logto's Previous/Next keys). The signing algorithm follows keys[0]:
// EC P-384 -> ES384 (Logto's default), RSA -> RS256 (Logto's RSA option). kid is left to
// oidc-provider, which computes the RFC 7638 thumbprint as Logto does.
// Once listening it prints `READY <issuer>` on stdout; port 0 picks a free port.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    keys: { type: 'string' },
    dpop: { type: 'boolean', default: false },
  },
});
const jwks = JSON.parse(readFileSync(args.keys ?? process.env.ISSUER_KEYS_FILE, 'utf8'));
const [current] = jwks.keys;
const ALG = current.kty === 'RSA' ? 'RS256' : { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }[current.crv];

const RESOURCE = 'https://shopping.api';
const SCOPES = 'read:products write:products';
// What each app's M2M roles grant on RESOURCE. Logto narrows the requested scopes to these
// silently (no error); getResourceServerInfo below does the same per client.
const GRANTED = {
  'shop-admin': 'read:products write:products',
  'shop-reader': 'read:products',
  'shop-reader-strict': 'read:products',
};
const client = (clientId, extra = {}) => ({
  client_id: clientId,
  client_secret: `${clientId}-secret`,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...extra,
});

// Listen first so that port 0 works: the issuer URL must be known before the Provider exists.
const server = createServer();
await new Promise((resolve) => { server.listen(Number(args.port), '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}/oidc`;

const provider = new Provider(issuer, {
  jwks,
  clients: [
    client('shop-admin'),
    client('shop-reader'),
    // oidc-provider's own allow-list, client metadata `scope`, differs from Logto: it only
    // applies to scopes listed in `scopes` below, and a request beyond it fails with
    // 400 invalid_scope instead of being narrowed. This app shows that behaviour.
    client('shop-reader-strict', { scope: 'read:products' }),
  ],
  // Needed only so that the strict client's `scope` metadata validates.
  scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
  // oidc-provider validates every client's ID token algorithm even though no ID token is ever
  // issued here; ES384 is not among its defaults.
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256', 'ES384', 'ES512'] },
  clientDefaults: { id_token_signed_response_alg: ALG },
  features: {
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Logto: a client_credentials request without `resource` is 400 invalid_target.
      defaultResource: () => { throw new errors.InvalidTarget('resource indicator is missing'); },
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator, { clientId }) => {
        if (indicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: GRANTED[clientId] ?? '',
          audience: RESOURCE,
          accessTokenFormat: 'jwt', // typ at+jwt, claims jti sub iat exp scope client_id iss aud
          accessTokenTTL: 3600,
          jwt: { sign: { alg: ALG } },
        };
      },
    },
    // Everything an M2M token endpoint does not need.
    devInteractions: { enabled: false },
    dPoP: { enabled: args.dpop },
    pushedAuthorizationRequests: { enabled: false },
    rpInitiatedLogout: { enabled: false },
    userinfo: { enabled: false },
  },
});

// Serve the JWKS as Logto does: no lifetime, an ETag, 304 on If-None-Match.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/jwks' && ctx.status === 200) {
    ctx.set('Cache-Control', 'no-cache, max-age=0, must-revalidate');
    ctx.etag = createHash('sha256').update(JSON.stringify(ctx.body)).digest('base64url');
    if (ctx.fresh) ctx.status = 304;
  }
});

// Mount under /oidc, as Logto does; oidc-provider derives its mount path from originalUrl.
const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url === '/oidc' || req.url.startsWith('/oidc/') || req.url.startsWith('/oidc?')) {
    req.originalUrl = req.url;
    req.url = req.url.slice('/oidc'.length) || '/';
    callback(req, res);
  } else {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}');
  }
});

const stop = () => { server.close(() => process.exit(0)); server.closeAllConnections(); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
console.log(`READY ${issuer}`);
