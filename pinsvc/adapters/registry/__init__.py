"""The registry adapter: `client.py` (RegistryClient: layer sizes of digest references,
memory and disk cache), `manifest.py` (parsing and platform choice, pure), `auth.py`
(challenges, tokens, Basic) and `transport.py` (HTTP exchanges, retries, errors)."""
