#!/usr/bin/env bash
# The CI steps as a plain script: build a multi-arch image of a Cargo
# package, attach an SBOM per platform, sign it, push it, and deploy it to a
# swarm by digest. Runs on any CI with Rust, the rustup targets and the
# cross linkers scripts/lib/prereqs.sh names; no Docker daemon.
#
# Environment (from the CI's secret store; none of it is ever printed):
#   REGISTRY_USER, REGISTRY_TOKEN      push credentials for the registry
#   SIGNING_KEY                        the private key (fogswarm image keygen), PEM
#   FOGSWARM_SERVER, FOGSWARM_CA_FINGERPRINT, FOGSWARM_TOKEN   the fleet's server
# Arguments: IMAGE (registry/name, no tag), PACKAGE, SWARM, SERVICE
set -euo pipefail
image=$1 package=$2 swarm=$3 service=$4
tag=${GITHUB_SHA:-$(git rev-parse HEAD)}
tag=${tag:0:12}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
printf '%s' "$SIGNING_KEY" >"$work/signing.key"
export FOGSWARM_REGISTRY_USER=$REGISTRY_USER FOGSWARM_REGISTRY_TOKEN=$REGISTRY_TOKEN
# Reproducible: the same commit gives the same digests.
export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)

fogswarm image build --tag "$image:$tag" --package "$package" --profile release \
  --platform linux/amd64,linux/arm64,linux/arm/v7 \
  --push --sign "$work/signing.key" --json >"$work/pushed.json"
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["index_digest"])' "$work/pushed.json")
echo "pushed and signed $image@$digest"

# Deploy by digest: a tag pushed over later changes nothing on the fog.
fogswarm service deploy "$service" --swarm "$swarm" --image "$image@$digest" --mode global
