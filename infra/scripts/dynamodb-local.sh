#!/usr/bin/env bash
# Runs DynamoDB Local in the foreground, for `local-server --store dynamodb` and for poking at the
# store by hand. Installs it first (into the gitignored .tools/) if needed. Ctrl-C stops it.
#
#   bash infra/scripts/dynamodb-local.sh [PORT] [--db-path DIR]
#
# PORT defaults to 8000. Data is kept in memory (gone on exit) unless --db-path names a folder.
# Point the gateway at it with:
#   export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:PORT GATEWAY_TABLE=gateway AWS_REGION=us-east-1 \
#          AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local
set -euo pipefail

LOG_TAG=dynamodb-local
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

port=8000
db_path=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --db-path)
            [ "$#" -ge 2 ] || die "--db-path needs a folder"
            mkdir -p "$2"
            db_path="$(cd "$2" && pwd)"
            shift 2
            ;;
        *[!0-9]* | "") die "unknown argument '$1' (see --help)" ;;
        *) port="$1"; shift ;;
    esac
done

ensure_java || die "no Java to run DynamoDB Local"
install_dynamodb_local || die "could not install DynamoDB Local"
dynamodb_local_command "$port" "$db_path"

log "DynamoDB Local on http://127.0.0.1:$port ($([ -n "$db_path" ] && echo "data in $db_path" || echo "in memory"))"
log "use it with: AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$port GATEWAY_TABLE=gateway AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local"
exec "${DDB_LOCAL_CMD[@]}"
