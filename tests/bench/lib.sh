# Shared by the bench scripts (sourced after `cd` to the repository root):
# a work directory, every process a script starts killed at exit and every
# redis-server it started shut down, and free loopback ports.
work=$(mktemp -d)
PIDS=()         # every process the script started (killed by pid at exit)
REDIS_PORTS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${REDIS_PORTS[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A config with one API key allowed any rate ($work/bench.toml), its token
# exported for `inkstream load` (a bench key, not a secret).
bench_config() {
  local key=bench-key-not-secret
  cat >"$work/bench.toml" <<EOF
[[auth.api_keys]]
name = "bench"
sha256 = "$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
scopes = ["ingest", "read"]
rate_per_sec = 100000000.0
burst = 200000000.0
EOF
  export INKSTREAM_LOAD_TOKEN="$key"
}
