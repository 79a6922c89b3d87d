"""The registry adapter: `client.py` (RegistryClient: layer sizes of digest references through
their endpoints, memory and disk cache), `endpoints.py` (the runtime's order of an image's
endpoints and the errors naming them), `manifest.py` (parsing and platform choice, pure),
`auth.py` (challenges, tokens, Basic) and `transport.py` (HTTP exchanges, TLS per endpoint,
retries, errors)."""
