#!/usr/bin/env bash
# One signed request to pymgr's TCP listener with nothing but bash, openssl and
# curl: the scheme of docs/security.md ("Signed requests"), written from the
# docs alone. tests/test_daemon_security.py runs it against a real daemon.
#
# Usage: examples/signed_curl.sh MODULE ACTION [JSON_BODY]
# Environment (defaults: the demo's listener and its PUBLIC demo key):
#   PYMGR_URL     http://127.0.0.1:6668
#   PYMGR_KEY_ID  demo
#   PYMGR_SECRET  pymgr-demo-key--public--never-use-it
set -euo pipefail

url=${PYMGR_URL:-http://127.0.0.1:6668}
key_id=${PYMGR_KEY_ID:-demo}
secret=${PYMGR_SECRET:-pymgr-demo-key--public--never-use-it}
module=$1
action=$2
body=${3:-"{}"}

# Module and action names made of letters, digits, '_', '-' and '.' need no
# percent-encoding, so this path is already canonical.
path="/v1/modules/${module}/${action}"
timestamp=$(date +%s)
nonce=$(openssl rand -hex 16)
body_hash=$(printf '%s' "$body" | openssl dgst -sha256 -r | cut -d' ' -f1)
# Eight lines joined by "\n", no newline at the end; the query line is empty.
canonical=$(printf 'PYMGR-HMAC-SHA256\nPOST\n%s\n\n%s\n%s\n%s\n%s' \
    "$path" "$body_hash" "$timestamp" "$nonce" "$key_id")
signature=$(printf '%s' "$canonical" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)

exec curl -sS -X POST \
    -H "Content-Type: application/json" \
    -H "X-Pymgr-Key: ${key_id}" \
    -H "X-Pymgr-Timestamp: ${timestamp}" \
    -H "X-Pymgr-Nonce: ${nonce}" \
    -H "X-Pymgr-Signature: ${signature}" \
    --data-binary "$body" \
    "${url}${path}"
