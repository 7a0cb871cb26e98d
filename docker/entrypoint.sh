#!/bin/sh
# The images' entry point: turn secret files into the environment variables chexrl reads, then run the
# command. For each NAME in the list below, NAME_FILE (if set) names a file whose content (trailing
# newlines dropped) becomes NAME. A NAME_FILE that cannot be read is an error: a service wired for a token
# must not start without it. Ray reads its own token file natively (RAY_AUTH_TOKEN_PATH).
set -eu

for name in CHEXRL_EVALUATOR_TOKEN; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ] || [ ! -s "$file" ]; then
            echo "entrypoint: ${name}_FILE=$file is not a readable, non-empty file" >&2
            exit 64
        fi
        value=$(cat "$file")
        export "$name=$value"
        unset "${name}_FILE"
    fi
done

if [ "$#" -eq 0 ]; then
    set -- chexrl --help
fi
exec "$@"
