-- wrk script for every cell: an optional request body (WRK_BODY_BYTES, for
-- post_1m) and a machine-readable summary line ("WRKJSON {...}") for run.py.
local body_bytes = tonumber(os.getenv("WRK_BODY_BYTES") or "0")
if body_bytes > 0 then
  wrk.method = "POST"
  -- 251 is prime: the body is not one repeated 64 KiB block
  local pattern = ""
  for i = 0, 250 do pattern = pattern .. string.char(32 + (i * 7) % 95) end
  local body = string.rep(pattern, math.floor(body_bytes / 251) + 1)
  wrk.body = string.sub(body, 1, body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
