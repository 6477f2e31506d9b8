#!/bin/bash
# usage: ab.sh LABEL [extra toml lines for [clusters.source.kafka]]
label=$1; extra=$2
B=/work/main/target/release
pkill -INT -f "strait run --config /tmp/exp/strait" ; sleep 3
cp ${BASE:-/tmp/exp/strait.toml} /tmp/exp/strait-$label.toml
sed -i "s/group_id = \"exp-1\"/group_id = \"exp-$label-$RANDOM\"/" /tmp/exp/strait-$label.toml
if [ -n "$extra" ]; then printf '\n[clusters.source.kafka]\n%s\n' "$extra" >> /tmp/exp/strait-$label.toml; fi
# the [clusters.source.kafka] table must follow [clusters.source]: rewrite with python
python3 - /tmp/exp/strait-$label.toml <<'PY'
import sys,re
p=sys.argv[1]; s=open(p).read()
m=re.search(r"\n\[clusters\.source\.kafka\]\n(.*)\n?$", s, re.S)
if m:
    body=m.group(1); s=s[:m.start()]+"\n"
    s=s.replace('[clusters.destination]', '[clusters.source.kafka]\n'+body+'\n\n[clusters.destination]')
open(p,'w').write(s)
PY
($B/strait run --config /tmp/exp/strait-$label.toml > /tmp/exp/strait-$label.log 2>&1 &)
sleep 12
P=$(pgrep -f "strait run --config /tmp/exp/strait-$label")
($B/strait-bench latency --source 127.0.0.1:24900 --dest 127.0.0.1:27967 --topic ${LAT:-bench.p100.lat} --rate ${RATE:-2000} --seconds 40 --size ${SIZE:-1024} > /tmp/exp/lat-$label.json 2>/tmp/exp/lat-$label.err &)
sleep 8
read -r -a a < /proc/$P/stat; c1=$((a[13]+a[14]))
jc1=0; for j in $(pgrep java); do read -r -a b < /proc/$j/stat; jc1=$((jc1+b[13]+b[14])); done
sleep 25
read -r -a a < /proc/$P/stat; c2=$((a[13]+a[14]))
jc2=0; for j in $(pgrep java); do read -r -a b < /proc/$j/stat; jc2=$((jc2+b[13]+b[14])); done
sleep 10
python3 - /tmp/exp/lat-$label.json "$label" $((c2-c1)) $((jc2-jc1)) $(cut -d' ' -f1 /proc/loadavg) <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); l=sys.argv[2]
r=d["replication"]; h=d["source_hop"]
print(f"{l}: strait {int(sys.argv[3])/25:.1f}% core, brokers {int(sys.argv[4])/25:.1f}% | e2e p50/p99 {d['p50_ms']:.0f}/{d['p99_ms']:.0f} | hop {h['p50_ms']:.0f}/{h['p99_ms']:.0f} | share {r['p50_ms']:.1f}/{r['p99_ms']:.0f} ms | load {sys.argv[5]}")
PY
