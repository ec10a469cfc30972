#!/usr/bin/env bash
# `make gateway`: REPLICAS servers on 127.0.0.1 speaking vllm.grpc.engine, and smg in front
# serving OpenAI HTTP on 127.0.0.1:GATEWAY_PORT (docs/gateway.md). Ctrl-C stops them all.
# smg fetches the tokenizer and chat template from the workers (GetTokenizer), so it needs
# no copy of the model. Every server flag can also come from its ZOPILOT_* variable.
set -euo pipefail
VENV=${1:-.venv}
REPLICAS=${REPLICAS:-2}
BASE_PORT=${BASE_PORT:-50061}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
POLICY=${POLICY:-cache_aware}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' EXIT INT TERM
urls=()
for ((i = 0; i < REPLICAS; i++)); do
  port=$((BASE_PORT + i))
  "$VENV/bin/python" -m zopilot_server --host 127.0.0.1 --port "$port" --protocols zopilot,vllm &
  pids+=($!)
  urls+=("grpc://127.0.0.1:$port")
done
"$VENV/bin/smg" launch --backend vllm --worker-urls "${urls[@]}" --policy "$POLICY" \
  --host 127.0.0.1 --port "$GATEWAY_PORT" --log-level warn &
pids+=($!)
echo "gateway: http://127.0.0.1:$GATEWAY_PORT/v1 ($POLICY over ${urls[*]})" >&2
wait -n
