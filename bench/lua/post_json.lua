-- wrk script: POST the JSON body in $BENCH_BODY (or send $BENCH_METHOD with no body, e.g. GET), report the run
-- as one JSON line (latencies in microseconds).
wrk.method = os.getenv("BENCH_METHOD") or "POST"
if wrk.method == "POST" then
   wrk.body = os.getenv("BENCH_BODY") or "{}"
   wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"duration_us": %d, "requests": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
