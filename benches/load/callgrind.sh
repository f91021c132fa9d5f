#!/usr/bin/env bash
# Instructions per request (valgrind --tool=callgrind) through keyrelay or the
# bare hop of the load bench, chat or stream. Build first:
#   cargo build --release --bin keyrelay --bench load
# Needs valgrind and curl (Debian packages).
# runs N1 and N2 keep-alive requests through one curl each and prints the
# difference per request. Usage: benches/load/callgrind.sh keyrelay|hop chat|stream [N1 N2]
set -euo pipefail
what=$1 mode=$2 n1=${3:-500} n2=${4:-2500}
rel=${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/release
bench=$(ls -t $rel/deps/load-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
"$bench" serve-mock > $work/mock.out &
mockpid=$!
sleep 0.5
mock=$(sed -n 's/^listening on //p' $work/mock.out)
stream=false; [ "$mode" = stream ] && stream=true
if [ "$what" = keyrelay ]; then model=openai/gpt-4o-mini; else model=gpt-4o-mini; fi
body="{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}],\"stream\":$stream}"
run() {
  local n=$1; local out=$work/cg.$n
  if [ "$what" = keyrelay ]; then
    (cd $work; env -i PATH=$PATH TOKIO_WORKER_THREADS=1 PROXY_API_KEY=bench-proxy-key OPENAI_API_BASE=http://$mock/v1 \
      OPENAI_API_KEY_1=sk-bench-1111111111111111111111111111111111111111 OPENAI_API_KEY_2=sk-bench-2222222222222222222222222222222222222222 \
      OPENAI_API_KEY_3=sk-bench-3333333333333333333333333333333333333333 OPENAI_API_KEY_4=sk-bench-4444444444444444444444444444444444444444 \
      valgrind --tool=callgrind --callgrind-out-file=$out $rel/keyrelay --host 127.0.0.1 --port 0 --log-level info --data-dir $work \
      > $work/kr.out 2>$work/vg.err &
    echo $! > $work/pid)
  else
    (valgrind --tool=callgrind --callgrind-out-file=$out "$bench" serve-bare-hop $mock > $work/kr.out 2>$work/vg.err & echo $! > $work/pid)
  fi
  local addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/^keyrelay listening on http:\/\///p; s/^listening on //p' $work/kr.out | head -1)
    [ -n "$addr" ] && break; sleep 0.2
  done
  : > $work/curl.cfg
  for i in $(seq $n); do echo "url = \"http://$addr/v1/chat/completions\"" >> $work/curl.cfg; echo "output = \"/dev/null\"" >> $work/curl.cfg; done
  curl -s -K $work/curl.cfg -X POST -H 'authorization: Bearer bench-proxy-key' -H 'content-type: application/json' -d "$body"
  local pid=$(cat $work/pid); kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.2; done
  sleep 0.3
  grep -E '^(summary|totals):' $out | awk '{print $2}' | head -1
}
a=$(run $n1); b=$(run $n2)
kill $mockpid
echo "$what $mode: $(( (b - a) / (n2 - n1) )) instructions/request  (n=$n1: $a, n=$n2: $b)  outputs in $work"
