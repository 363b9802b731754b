#!/usr/bin/env bash
# Bytes on the wire of one build, for comparing two builds by hand (a refactoring must not change
# them): runs BINARY on a fixed data dir under WORKDIR with a python http.server origin, fills three
# objects and their compressed variants, then writes `curl -si` of a hit, HEAD, 302, both 304s, 206,
# 416, gzip and br hits, the folder redirect, the index document, 405, unknown bucket and host, 431,
# a refused preflight, a dot-segment key and HTTP/1.0, with Date and request ids blanked.
#   .ci/wire_snapshot.sh OLD_BINARY /tmp/old.txt; .ci/wire_snapshot.sh NEW_BINARY /tmp/new.txt
#   diff /tmp/old.txt /tmp/new.txt      # run each twice and compare the second runs (variants)
# Uses ports 18080, 18081 and 19100 on 127.0.0.1. Not run by CI.
set -u
BIN=$1; OUT=$2; W=${WORKDIR:-/tmp/originpull-wire}
mkdir -p $W/data $W/site
[ -f $W/site/app.js ] || { for i in $(seq 2000); do echo "function f$i(a){return a+$i;}"; done > $W/site/app.js; head -c 5000 /dev/urandom > $W/site/img.bin; mkdir -p $W/site/docs; echo "<h1>i</h1>" > $W/site/docs/index.html; }
cat > $W/cfg.yaml <<Y
listen: 127.0.0.1:18080
metrics_listen: 127.0.0.1:19100
data_dir: $W/data
domain_suffix: file.myqcloud.com
access_log: "off"
buckets:
  - name: w-1250000000
    website:
      index_document: index.html
    origin_pull:
      enabled: true
      origins:
        - address: 127.0.0.1:18081
Y
(cd $W/site && exec python3 -m http.server 18081 --bind 127.0.0.1 >/dev/null 2>&1) & OP=$!
$BIN -c $W/cfg.yaml >$W/srv.log 2>&1 & SP=$!
sleep 1.5
H="Host: w-1250000000.file.myqcloud.com"
U=http://127.0.0.1:18080
for k in /app.js /img.bin /docs/index.html; do curl -s -o /dev/null -H "$H" $U$k; done
for e in gzip br zstd; do curl -s -o /dev/null -H "$H" -H "Accept-Encoding: $e" $U/app.js; done
sleep 2
norm() { sed -E 's/^(Date|date): .*/\1: X/; s/^(x-[a-z-]*request-id): .*/\1: X/I; s#<RequestId>[^<]*</RequestId>#<RequestId>X</RequestId>#'; }
{
echo "== hit"; curl -si -H "$H" $U/img.bin | head -c 600 | strings | norm
echo "== head"; curl -sI -H "$H" $U/img.bin | norm
echo "== 302"; curl -si -H "$H" "$U/nothing/here.bin?x=1" | norm
LM=$(curl -sI -H "$H" $U/img.bin | grep -i '^last-modified' | cut -d' ' -f2- | tr -d '\r')
ET=$(curl -sI -H "$H" $U/img.bin | grep -i '^etag' | cut -d' ' -f2- | tr -d '\r')
echo "== 304 ims"; curl -si -H "$H" -H "If-Modified-Since: $LM" $U/img.bin | norm
echo "== 304 inm"; curl -si -H "$H" -H "If-None-Match: $ET" $U/img.bin | norm
echo "== 206"; curl -si -H "$H" -H "Range: bytes=10-19" $U/img.bin | strings | norm
echo "== 416"; curl -si -H "$H" -H "Range: bytes=99999-" $U/img.bin | norm
echo "== gzip"; curl -si -H "$H" -H "Accept-Encoding: gzip" $U/app.js | head -c 700 | strings | norm
echo "== br"; curl -si -H "$H" -H "Accept-Encoding: br" $U/app.js | head -c 700 | strings | norm
echo "== folder"; curl -si -H "$H" $U/docs | norm
echo "== index"; curl -si -H "$H" $U/docs/ | norm
echo "== 405"; curl -si -X DELETE -H "$H" $U/img.bin | norm
echo "== nobucket"; curl -si -H "Host: nope-1250000000.file.myqcloud.com" $U/img.bin | norm
echo "== badhost"; curl -si -H "Host: example.org" $U/img.bin | norm
echo "== 431"; curl -si -H "$H" -H "X-Big: $(head -c 70000 /dev/zero | tr '\0' a)" $U/img.bin | norm
echo "== preflight"; curl -si -X OPTIONS -H "$H" -H "Origin: https://a.example" -H "Access-Control-Request-Method: GET" $U/img.bin | norm
echo "== badpath"; curl -si --path-as-is -H "$H" "$U/a/../../etc/passwd" | norm
echo "== http10"; curl -si --http1.0 -H "$H" $U/img.bin | head -c 400 | strings | norm
} > $OUT 2>&1
kill $SP $OP; wait 2>/dev/null
