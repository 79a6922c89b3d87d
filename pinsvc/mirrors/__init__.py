"""Registry mirrors as the container runtime resolves them (pure: text in, endpoints out).

CRI-O pulls through containers/image, which reads `registries.conf` and
`registries.conf.d/*.conf` (containers-registries.conf(5), -conf.d(5)) and turns each image
reference into an ordered list of endpoints: mirrors, then the primary location. Anything
pinsvc fetches from a registry itself (manifests, to size a pull) must follow the same
rules, or it contacts a registry the node never uses (a disconnected cluster has no route to
`quay.io`; its `registries.conf` names the mirror).

- `config`: parse one file, merge the drop-ins (`load`), with the runtime's validation.
- `resolve`: the `[[registry]]` for a reference and its endpoints (`resolve`).
- `certs`: which files of a `certs.d/<host[:port]>` directory the runtime uses.

The behaviour is that of containers/image v5.38 (`pkg/sysregistriesv2`, `docker/`), the
version CRI-O 1.36 is built with; each module says where it departs from it and why. File
reading and change detection live in `pinsvc.adapters.registries_conf`.
"""
