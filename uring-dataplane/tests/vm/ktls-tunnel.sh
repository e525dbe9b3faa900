#!/bin/sh
# Runs inside the kTLS VM (tools/ktls-vm.sh): two gateways, an s2bench sink,
# the inbound and outbound requests through s2uc, a checked stream.
# Usage: ktls-tunnel.sh BYTES [extra s2cs arguments for the instrument gateway...]
for a in grep sed tr cut head kill; do busybox ln -sf busybox /bin/$a; done
BYTES=$1; shift
INST_ARGS="$*"
C=/certs
export RUST_LOG=info,scistream_dataplane=debug
cd /tmp
gw() { # name port range [args]
  name=$1 port=$2 range=$3; shift 3
  s2cs --port "$port" --control-ip 127.0.0.1 --listener-ip 127.0.0.1 --port-range "$range" \
       --server_crt $C/$name.crt --server_key $C/$name.key --peer-ca $C/ca.crt --state-dir /tmp/$name "$@" \
       >/tmp/$name.out 2>/tmp/$name.log &
}
wait_for() { # file text
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "TIMEOUT waiting for '$2' in $1"; cat /tmp/*.log; exit 1; }
    sleep 0.2
  done
}
gw hpc 5000 5100-5110
gw inst 6000 6100-6110 $INST_ARGS
wait_for /tmp/hpc.out listening
wait_for /tmp/inst.out listening
s2bench sink --listen 127.0.0.1:7001 --conns 2 -q --json /tmp/sink.json >/tmp/sink.out 2>&1 &
SINK=$!
s2uc inbound_request --s2cs 127.0.0.1:5000 --server_cert $C/ca.crt --remote_ip 127.0.0.1 \
     --receiver_ports 7001 --num_conn 2 --json >/tmp/in.json || { cat /tmp/*.log; exit 1; }
SESSION=$(sed -n 's/.*"uid":"\([^"]*\)".*/\1/p' /tmp/in.json)
IN=$(sed -n 's/.*"listeners":\["\([^]]*\)"\].*/\1/p' /tmp/in.json | sed 's/","/,/g')
s2uc outbound_request --s2cs 127.0.0.1:6000 --server_cert $C/ca.crt --num_conn 2 --json "$SESSION" "$IN" \
     >/tmp/out.json || { cat /tmp/*.log; exit 1; }
OUT=$(sed -n 's/.*"listeners":\["\([^]]*\)"\].*/\1/p' /tmp/out.json | sed 's/","/,/g')
s2bench source --connect "$OUT" --conns 2 --bytes "$BYTES" -q >/tmp/source.out 2>&1
echo "SOURCE exit $?"
cat /tmp/source.out
# The sink ends when both streams ended (well or not); do not wait forever.
i=0
while kill -0 $SINK 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
kill $SINK 2>/dev/null
wait $SINK
echo "SINK exit $?"
echo "=== sink"; cat /tmp/sink.json
echo "=== hpc"; grep -i "ktls\|refused\|aborted\|KeyUpdate" /tmp/hpc.log
echo "=== inst"; grep -i "ktls\|refused\|aborted\|KeyUpdate" /tmp/inst.log
