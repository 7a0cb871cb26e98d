#!/bin/sh
# The images' entry point: check the secret files a service is wired for, then run the command. For each
# NAME in the list below, NAME_FILE (if set) must name a readable, non-empty file: a service wired for a
# token must not start without it. The file is left for chexrl to read (CHEXRL_EVALUATOR_TOKEN_FILE):
# the token itself is never put into the environment, which every child process (each Ray worker on the
# head) would inherit and show in /proc/<pid>/environ. Ray reads its own token file (RAY_AUTH_TOKEN_PATH).
set -eu

for name in CHEXRL_EVALUATOR_TOKEN; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ] || [ ! -s "$file" ]; then
            echo "entrypoint: ${name}_FILE=$file is not a readable, non-empty file" >&2
            exit 64
        fi
        unset "$name"  # one source of the token: the file
    fi
done

if [ "$#" -eq 0 ]; then
    set -- chexrl --help
fi
exec "$@"
