#!/usr/bin/env bash
# The main job on embedded defaults: download a URL through dffs, twice, and
# show the second run being served from local pieces.
#   scripts/demo.sh URL     download URL
#   scripts/demo.sh         start a local nginx with a 256 MiB demo file and use it
set -euo pipefail
cd "$(dirname "$0")/.."
DFFS=.venv/bin/dffs
work=$(mktemp -d /tmp/dffs-demo.XXXXXX)
nginx_pid=""
cleanup() {
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

url=${1:-}
if [ -z "$url" ]; then
  mkdir -p "$work/www" "$work/tmp"
  echo "demo: writing a 256 MiB file and starting nginx on 127.0.0.1 ..."
  head -c $((256 * 1024 * 1024)) /dev/urandom > "$work/www/demo.bin"
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/nginx.conf" <<CONF
daemon off; master_process off; user root; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 64; }
http {
  access_log $work/access.log; sendfile on;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  server { listen 127.0.0.1:$port; root $work/www; }
}
CONF
  nginx -p "$work" -c "$work/nginx.conf" &
  nginx_pid=$!
  for _ in $(seq 50); do curl -sfI "http://127.0.0.1:$port/demo.bin" >/dev/null && break; sleep 0.1; done
  url="http://127.0.0.1:$port/demo.bin"
fi

data_dir="$work/data"
for run in first second; do
  echo "demo: $run download of $url"
  start=$EPOCHREALTIME
  "$DFFS" get "$url" -O "$work/out.bin" --data-dir "$data_dir"
  end=$EPOCHREALTIME
  .venv/bin/python -c "print(f'demo: $run download took {$end - $start:.2f}s')"
done
echo "demo: sha256 of the download: $(sha256sum "$work/out.bin" | cut -d' ' -f1)"
if [ -f "$work/www/demo.bin" ]; then
  echo "demo: sha256 at the origin:   $(sha256sum "$work/www/demo.bin" | cut -d' ' -f1)"
  echo "demo: what the origin served (requests by method and status, body bytes):"
  awk '{gsub(/"/, "", $6); n[$6 " " $9]++; b[$6 " " $9] += $10}
       END {for (k in n) printf "  %-9s x%-4d %d bytes\n", k, n[k], b[k]}' "$work/access.log" | sort
fi
