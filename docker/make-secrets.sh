#!/bin/sh
# Make the deployment's tokens: DIR/ray_auth_token (Ray's token authentication) and DIR/evaluator_token
# (the evaluator's bearer token), 64 hex characters each from /dev/urandom, written without a newline.
# DIR defaults to docker/secrets (compose reads it; git-ignored); use k8s/secrets for the KubeRay
# kustomization. Existing tokens are kept (run again safely); --force replaces them. The directory is
# private to you (0700); the files are 0644 because the containers' non-root user (uid 1000) must read the
# bind-mounted secret files.
#
#   bash docker/make-secrets.sh [--force] [DIR]
set -eu

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
dir=${1:-$(dirname "$0")/secrets}

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
for name in ray_auth_token evaluator_token; do
    path="$dir/$name"
    if [ -s "$path" ] && [ "$force" -eq 0 ]; then
        echo "kept    $path"
        continue
    fi
    token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    if [ "${#token}" -ne 64 ]; then
        echo "make-secrets: could not read 32 random bytes" >&2
        exit 1
    fi
    printf '%s' "$token" > "$path.tmp"
    chmod 644 "$path.tmp"
    mv "$path.tmp" "$path"
    echo "written $path"
done
