# Sourced by scripts/demo and scripts/bench: point the fogswarm CLI at a
# lab's config server and name its registry.
#   eval "$(lab_env FOGSWARM_BINARY LAB_NAME)"
# sets FOGSWARM_SERVER, FOGSWARM_CA_FINGERPRINT, FOGSWARM_TOKEN_FILE (exported)
# and LAB_REGISTRY (the registry's host:port).
lab_env() {
  "$1" lab status --name "$2" --json | python3 -c '
import json, shlex, sys
s = json.load(sys.stdin)
server = s["server"]
print("export FOGSWARM_SERVER={} FOGSWARM_CA_FINGERPRINT={} FOGSWARM_TOKEN_FILE={}; LAB_REGISTRY={}".format(
    *(shlex.quote(str(v)) for v in (server["url"], server["ca_fingerprint"], server["admin_token_file"], s["registry"]["addr"]))))
'
}
