-- wrk script: shapes the request from environment variables and prints one JSON summary line.
--   WRK_METHOD     request method (default GET)
--   WRK_BODY_SIZE  bytes of request body ("x" repeated; wrk adds Content-Length)
--   WRK_CLOSE      "1" sends "Connection: close" (RFC 9112 section 9.6): one request per connection
-- No response() callback on purpose: defining one makes wrk hand every response to Lua, which
-- slows the load generator. wrk counts status >= 400 in errors.status itself.

local method = os.getenv("WRK_METHOD")
local body_size = tonumber(os.getenv("WRK_BODY_SIZE") or "0") or 0
if method and method ~= "" then
   wrk.method = method
end
if body_size > 0 then
   wrk.body = string.rep("x", body_size)
   wrk.headers["Content-Type"] = "application/octet-stream"
end
if os.getenv("WRK_CLOSE") == "1" then
   wrk.headers["Connection"] = "close"
end

done = function(summary, latency, requests)
   local e = summary.errors
   local parts = {}
   for _, p in ipairs({50, 75, 90, 99, 99.9}) do
      parts[#parts + 1] = string.format('"%s":%.1f', tostring(p), latency:percentile(p))
   end
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%.1f,"percentiles":{%s}}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.max, table.concat(parts, ",")))
end
