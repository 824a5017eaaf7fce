// A real OpenID Connect provider for the tests (panva's oidc-provider, certified by the
// OpenID Foundation): HTTPS with the test's CA, JWT access tokens by client_credentials
// and resource indicators (RFC 8707), the claims Pro Santé Connect puts in its tokens.
//
// Usage: node provider.mjs SPEC.json   (prints one JSON line {"issuer": ...} when ready)
// SPEC: {"key": PEM path, "cert": PEM path, "clients": [{"client_id", "client_secret",
//        "preferred_username", "acr", "ttl"}], "opaque_resource": URI or null}
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const byId = Object.fromEntries(spec.clients.map((c) => [c.client_id, c]));
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key-1', use: 'sig', alg: 'RS256' };

const server = https.createServer({
  key: fs.readFileSync(spec.key),
  cert: fs.readFileSync(spec.cert),
});

server.listen(0, '127.0.0.1', () => {
  const issuer = `https://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: spec.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    jwks: { keys: [signingKey] },
    scopes: ['mss'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // The gateway's client may introspect any token (a resource server's role).
        allowedPolicy: async () => true,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource, client) => ({
          scope: 'mss',
          audience: resource,
          accessTokenTTL: byId[client.clientId]?.ttl ?? 600,
          accessTokenFormat: resource === spec.opaque_resource ? 'opaque' : 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const c = byId[token.clientId];
      const claims = {};
      if (c?.preferred_username) claims.preferred_username = c.preferred_username;
      if (c?.acr) claims.acr = c.acr;
      return claims;
    },
  });
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// The test closes our stdin when it is done: never outlive it.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
